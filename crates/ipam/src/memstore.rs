//! A minimal in-memory [`Datastore`] for this crate's unit tests only (the real backends are
//! exercised by the integration tests under `tests/`). It yields to the scheduler before every
//! operation so concurrent tasks interleave between reads and writes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serval_store::{Datastore, KeyValue, Result, Revision, StoreError, TxnOp, Watch};

#[derive(Debug, Default)]
pub struct MemStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    rev: Revision,
    kvs: BTreeMap<String, KeyValue>,
}

impl State {
    fn check(&self, op: &TxnOp) -> Result<()> {
        let cur = self.kvs.get(op.key());
        match (op, cur) {
            (TxnOp::Create { key, .. }, Some(_)) => {
                Err(StoreError::AlreadyExists { key: key.clone() })
            }
            (TxnOp::Update { key, .. }, None) => Err(StoreError::NotFound { key: key.clone() }),
            (TxnOp::Update { key, expected, .. }, Some(kv)) if kv.mod_revision != *expected => {
                Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    actual: kv.mod_revision,
                })
            }
            (
                TxnOp::Delete {
                    key,
                    expected: Some(_),
                },
                None,
            ) => Err(StoreError::NotFound { key: key.clone() }),
            (
                TxnOp::Delete {
                    key,
                    expected: Some(e),
                },
                Some(kv),
            ) if kv.mod_revision != *e => Err(StoreError::Conflict {
                key: key.clone(),
                expected: *e,
                actual: kv.mod_revision,
            }),
            _ => Ok(()),
        }
    }

    fn apply(&mut self, op: TxnOp, rev: Revision) {
        match op {
            TxnOp::Create { key, value }
            | TxnOp::Update { key, value, .. }
            | TxnOp::Put { key, value } => {
                let create_revision = self.kvs.get(&key).map_or(rev, |kv| kv.create_revision);
                self.kvs.insert(
                    key.clone(),
                    KeyValue {
                        key,
                        value,
                        create_revision,
                        mod_revision: rev,
                    },
                );
            }
            TxnOp::Delete { key, .. } => {
                self.kvs.remove(&key);
            }
        }
    }
}

impl MemStore {
    fn txn_now(&self, ops: Vec<TxnOp>) -> Result<Revision> {
        let mut st = self.state.lock().unwrap();
        for (index, op) in ops.iter().enumerate() {
            st.check(op).map_err(|e| StoreError::TxnFailed {
                index,
                source: Box::new(e),
            })?;
        }
        st.rev += 1;
        let rev = st.rev;
        for op in ops {
            st.apply(op, rev);
        }
        Ok(rev)
    }

    fn single(&self, op: TxnOp) -> Result<Revision> {
        self.txn_now(vec![op]).map_err(|e| match e {
            StoreError::TxnFailed { source, .. } => *source,
            e => e,
        })
    }
}

#[async_trait]
impl Datastore for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        tokio::task::yield_now().await;
        Ok(self.state.lock().unwrap().kvs.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        tokio::task::yield_now().await;
        let st = self.state.lock().unwrap();
        let kvs = st
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((kvs, st.rev))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        tokio::task::yield_now().await;
        self.single(TxnOp::Create {
            key: key.to_string(),
            value,
        })
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        tokio::task::yield_now().await;
        self.single(TxnOp::Update {
            key: key.to_string(),
            value,
            expected,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Revision> {
        tokio::task::yield_now().await;
        self.single(TxnOp::Delete {
            key: key.to_string(),
            expected,
        })
    }

    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Revision> {
        tokio::task::yield_now().await;
        self.txn_now(ops)
    }

    async fn watch(&self, _prefix: &str, _after: Revision) -> Result<Watch> {
        Err(StoreError::WatchClosed {
            reason: "the unit-test MemStore has no watch".into(),
        })
    }

    async fn revision(&self) -> Result<Revision> {
        Ok(self.state.lock().unwrap().rev)
    }

    async fn compact(&self, _revision: Revision) -> Result<()> {
        Ok(())
    }
}
