//! Tokenizer and recursive-descent parser for the selector grammar in the parent module.

use std::collections::BTreeSet;

use super::{Expr, SelectorError};
use crate::labelselector::validate_label_key;

/// Deepest nesting of `!` and `(` accepted; keeps evaluation and printing recursion bounded
/// whatever the input.
const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A run of label-key characters `[A-Za-z0-9_./-]`: a key or a keyword.
    Word(String),
    /// A quoted string, quotes removed.
    Str(String),
    EqEq,
    NotEq,
    Bang,
    AndAnd,
    OrOr,
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    End,
    /// A character sequence that is no token; parsing stops with this message here.
    Bad(String),
}

/// A token and its 1-based character column.
#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    column: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// Splits the input into tokens, ending with `End` or, at the first unlexable spot, `Bad`.
fn tokenize(input: &str) -> Vec<Token> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        let (tok, len) = match (c, next) {
            ('=', Some('=')) => (Tok::EqEq, 2),
            ('!', Some('=')) => (Tok::NotEq, 2),
            ('&', Some('&')) => (Tok::AndAnd, 2),
            ('|', Some('|')) => (Tok::OrOr, 2),
            ('!', _) => (Tok::Bang, 1),
            ('(', _) => (Tok::LParen, 1),
            (')', _) => (Tok::RParen, 1),
            ('{', _) => (Tok::LBrace, 1),
            ('}', _) => (Tok::RBrace, 1),
            (',', _) => (Tok::Comma, 1),
            ('\'' | '"', _) => match chars[i + 1..].iter().position(|&q| q == c) {
                Some(n) => (Tok::Str(chars[i + 1..i + 1 + n].iter().collect()), n + 2),
                None => {
                    let msg = format!(
                        "unterminated string starting here; close it with {c} (strings have \
                         no escapes)"
                    );
                    tokens.push(Token {
                        tok: Tok::Bad(msg),
                        column,
                    });
                    return tokens;
                }
            },
            _ if is_word_char(c) => {
                let n = chars[i..].iter().take_while(|&&c| is_word_char(c)).count();
                (Tok::Word(chars[i..i + n].iter().collect()), n)
            }
            _ => {
                let hint = match c {
                    '=' => "; use '==' for equality",
                    '&' => "; use '&&' for and",
                    '|' => "; use '||' for or",
                    _ => "",
                };
                tokens.push(Token {
                    tok: Tok::Bad(format!("unexpected character {c:?}{hint}")),
                    column,
                });
                return tokens;
            }
        };
        tokens.push(Token { tok, column });
        i += len;
    }
    tokens.push(Token {
        tok: Tok::End,
        column: chars.len() + 1,
    });
    tokens
}

/// How a token reads in an error message.
fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Word(w) => format!("'{w}'"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::EqEq => "'=='".into(),
        Tok::NotEq => "'!='".into(),
        Tok::Bang => "'!'".into(),
        Tok::AndAnd => "'&&'".into(),
        Tok::OrOr => "'||'".into(),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBrace => "'{'".into(),
        Tok::RBrace => "'}'".into(),
        Tok::Comma => "','".into(),
        Tok::End => "end of input".into(),
        Tok::Bad(msg) => msg.clone(),
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

/// Parses a whole selector; empty input is `all()`.
pub(super) fn parse(input: &str) -> Result<Expr, SelectorError> {
    let mut p = Parser {
        tokens: tokenize(input),
        pos: 0,
        depth: 0,
    };
    if p.peek()? == &Tok::End {
        return Ok(Expr::All);
    }
    let expr = p.or_expr()?;
    match p.peek()? {
        Tok::End => Ok(expr),
        _ => Err(p.unexpected("'&&', '||' or end of input")),
    }
}

impl Parser {
    /// The current token; a lexing problem becomes the error here.
    fn peek(&self) -> Result<&Tok, SelectorError> {
        let t = &self.tokens[self.pos];
        match &t.tok {
            Tok::Bad(msg) => Err(SelectorError {
                column: t.column,
                message: msg.clone(),
            }),
            tok => Ok(tok),
        }
    }

    fn peek_at(&self, ahead: usize) -> Option<&Tok> {
        self.tokens.get(self.pos + ahead).map(|t| &t.tok)
    }

    fn column(&self) -> usize {
        self.tokens[self.pos].column
    }

    /// Moves past the current token (never past `End`).
    fn advance(&mut self) {
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
    }

    /// "expected X but found Y" at the current token (or the lexing error there).
    fn unexpected(&self, expected: &str) -> SelectorError {
        if let Err(e) = self.peek() {
            return e;
        }
        SelectorError {
            column: self.column(),
            message: format!(
                "expected {expected} but found {}",
                describe(&self.tokens[self.pos].tok)
            ),
        }
    }

    fn expect(&mut self, tok: Tok, expected: &str) -> Result<(), SelectorError> {
        if self.peek()? == &tok {
            self.advance();
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn expect_keyword(&mut self, word: &str) -> Result<(), SelectorError> {
        if matches!(self.peek()?, Tok::Word(w) if w == word) {
            self.advance();
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{word}'")))
        }
    }

    fn or_expr(&mut self) -> Result<Expr, SelectorError> {
        let mut items = vec![self.and_expr()?];
        while self.peek()? == &Tok::OrOr {
            self.advance();
            items.push(self.and_expr()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and_expr(&mut self) -> Result<Expr, SelectorError> {
        let mut items = vec![self.unary()?];
        while self.peek()? == &Tok::AndAnd {
            self.advance();
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn enter(&mut self) -> Result<(), SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SelectorError {
                column: self.column(),
                message: format!(
                    "nesting of '!' and '(' deeper than {MAX_DEPTH} levels; simplify the selector"
                ),
            });
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, SelectorError> {
        match self.peek()?.clone() {
            Tok::Bang => {
                self.enter()?;
                self.advance();
                let e = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(e)))
            }
            Tok::LParen => {
                self.enter()?;
                self.advance();
                let e = self.or_expr()?;
                self.expect(Tok::RParen, "')'")?;
                self.depth -= 1;
                Ok(e)
            }
            Tok::Word(w) if self.peek_at(1) == Some(&Tok::LParen) && w == "has" => {
                self.advance();
                self.advance();
                let key = self.key()?;
                self.expect(Tok::RParen, "')' to close has(")?;
                Ok(Expr::Has(key))
            }
            Tok::Word(w) if self.peek_at(1) == Some(&Tok::LParen) && w == "all" => {
                self.advance();
                self.advance();
                self.expect(Tok::RParen, "')' (all() takes no arguments)")?;
                Ok(Expr::All)
            }
            Tok::Word(w) if self.peek_at(1) == Some(&Tok::LParen) && w == "global" => {
                self.advance();
                self.advance();
                self.expect(Tok::RParen, "')' (global() takes no arguments)")?;
                Ok(Expr::Global)
            }
            Tok::Word(_) => self.comparison(),
            _ => Err(self.unexpected("a label comparison, has(), all(), global(), '!' or '('")),
        }
    }

    /// A label key at the current token, checked against Kubernetes key syntax.
    fn key(&mut self) -> Result<String, SelectorError> {
        let Tok::Word(w) = self.peek()?.clone() else {
            return Err(self.unexpected("a label key"));
        };
        validate_label_key(&w).map_err(|reason| SelectorError {
            column: self.column(),
            message: format!("invalid {reason}"),
        })?;
        self.advance();
        Ok(w)
    }

    /// `key OP operand`.
    fn comparison(&mut self) -> Result<Expr, SelectorError> {
        let key = self.key()?;
        let op = self.peek()?.clone();
        let word = match &op {
            Tok::Word(w) => w.as_str(),
            _ => "",
        };
        match (&op, word) {
            (Tok::EqEq, _) => {
                self.advance();
                let value = self.string()?;
                Ok(Expr::Eq { key, value })
            }
            (Tok::NotEq, _) => {
                self.advance();
                let value = self.string()?;
                Ok(Expr::Ne { key, value })
            }
            (_, "in") => {
                self.advance();
                let values = self.set()?;
                Ok(Expr::In { key, values })
            }
            (_, "not") => {
                self.advance();
                self.expect_keyword("in")?;
                let values = self.set()?;
                Ok(Expr::NotIn { key, values })
            }
            (_, "contains") => {
                self.advance();
                let value = self.string()?;
                Ok(Expr::Contains { key, value })
            }
            (_, "starts" | "startswith") => {
                self.advance();
                if word == "starts" {
                    self.expect_keyword("with")?;
                }
                let value = self.string()?;
                Ok(Expr::StartsWith { key, value })
            }
            (_, "ends" | "endswith") => {
                self.advance();
                if word == "ends" {
                    self.expect_keyword("with")?;
                }
                let value = self.string()?;
                Ok(Expr::EndsWith { key, value })
            }
            _ => Err(self.unexpected(&format!(
                "an operator after label key '{key}' (==, !=, in, not in, contains, \
                 starts with, ends with)"
            ))),
        }
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        match self.peek()? {
            Tok::Str(s) => {
                let s = s.clone();
                self.advance();
                Ok(s)
            }
            _ => Err(self.unexpected("a quoted string")),
        }
    }

    /// `{ 'a', 'b' }` (possibly empty).
    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.expect(Tok::LBrace, "'{'")?;
        let mut values = BTreeSet::new();
        if self.peek()? == &Tok::RBrace {
            self.advance();
            return Ok(values);
        }
        loop {
            values.insert(self.string()?);
            match self.peek()? {
                Tok::Comma => self.advance(),
                Tok::RBrace => {
                    self.advance();
                    return Ok(values);
                }
                _ => return Err(self.unexpected("',' or '}'")),
            }
        }
    }
}
