//! The port dimension: sets of ports as sorted disjoint intervals, and the split of a range
//! into aligned power-of-two blocks (what an LPM prefix on the 16-bit port can express).

/// The largest value of the port dimension (TCP/UDP/SCTP port, or ICMP `type << 8 | code`).
pub const PORT_MAX: u32 = 0xffff;

/// A set of ports: sorted, disjoint, non-adjacent inclusive intervals within `0..=PORT_MAX`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PortSet(Vec<(u32, u32)>);

impl PortSet {
    pub fn empty() -> PortSet {
        PortSet(Vec::new())
    }

    pub fn full() -> PortSet {
        PortSet(vec![(0, PORT_MAX)])
    }

    /// The union of arbitrary (possibly overlapping, unsorted) inclusive intervals.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u32, u32)>) -> PortSet {
        let mut v: Vec<(u32, u32)> = ranges
            .into_iter()
            .filter(|(a, b)| a <= b)
            .map(|(a, b)| (a.min(PORT_MAX), b.min(PORT_MAX)))
            .collect();
        v.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        PortSet(out)
    }

    pub fn intervals(&self) -> &[(u32, u32)] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.0 == [(0, PORT_MAX)]
    }

    pub fn contains(&self, p: u32) -> bool {
        self.0.iter().any(|&(a, b)| a <= p && p <= b)
    }

    pub fn complement(&self) -> PortSet {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut next = 0u32;
        for &(a, b) in &self.0 {
            if a > next {
                out.push((next, a - 1));
            }
            next = b + 1;
        }
        if next <= PORT_MAX {
            out.push((next, PORT_MAX));
        }
        PortSet(out)
    }

    pub fn intersect(&self, other: &PortSet) -> PortSet {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.0.len() && j < other.0.len() {
            let (a1, b1) = self.0[i];
            let (a2, b2) = other.0[j];
            let (a, b) = (a1.max(a2), b1.min(b2));
            if a <= b {
                out.push((a, b));
            }
            if b1 < b2 {
                i += 1;
            } else {
                j += 1;
            }
        }
        PortSet(out)
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        PortSet::from_ranges(self.0.iter().chain(&other.0).copied())
    }

    pub fn subtract(&self, other: &PortSet) -> PortSet {
        self.intersect(&other.complement())
    }
}

/// An aligned block of ports: the `16 - fixed_bits` low bits of `base` are zero, and the
/// block is every port sharing the top `fixed_bits` bits with `base` (LPM prefix length
/// `80 + fixed_bits` in `sv_pol_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortBlock {
    pub base: u16,
    pub fixed_bits: u8,
}

impl PortBlock {
    pub fn first(self) -> u32 {
        u32::from(self.base)
    }

    pub fn last(self) -> u32 {
        u32::from(self.base) + (1u32 << (16 - u32::from(self.fixed_bits))) - 1
    }
}

/// Splits `first..=last` into the fewest aligned power-of-two blocks (at most 30 for any
/// 16-bit range; one for the whole range).
pub fn port_blocks(first: u32, last: u32) -> Vec<PortBlock> {
    let mut out = Vec::new();
    if first > last || first > PORT_MAX {
        return out;
    }
    let end = last.min(PORT_MAX) + 1; // exclusive
    let mut a = first;
    while a < end {
        // The largest block aligned at `a` that does not run past `end`.
        let mut size = if a == 0 {
            1u32 << 16
        } else {
            a & a.wrapping_neg()
        };
        while a + size > end {
            size >>= 1;
        }
        out.push(PortBlock {
            base: a as u16,
            fixed_bits: (16 - size.trailing_zeros()) as u8,
        });
        a += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_known_ranges() {
        assert_eq!(
            port_blocks(0, 65535),
            vec![PortBlock {
                base: 0,
                fixed_bits: 0
            }]
        );
        assert_eq!(
            port_blocks(80, 80),
            vec![PortBlock {
                base: 80,
                fixed_bits: 16
            }]
        );
        // 1..=65534 is the worst case: 15 blocks up and 15 down.
        assert_eq!(port_blocks(1, 65534).len(), 30);
        let b = port_blocks(8000, 8015);
        assert_eq!(
            b,
            vec![PortBlock {
                base: 8000,
                fixed_bits: 12
            }]
        );
    }

    #[test]
    fn set_operations() {
        let a = PortSet::from_ranges([(10, 20), (15, 30), (31, 31), (50, 60)]);
        assert_eq!(a.intervals(), &[(10, 31), (50, 60)]);
        let c = a.complement();
        assert_eq!(c.intervals(), &[(0, 9), (32, 49), (61, PORT_MAX)]);
        assert!(a.intersect(&c).is_empty());
        assert!(a.union(&c).is_full());
        let b = PortSet::from_ranges([(25, 55)]);
        assert_eq!(a.intersect(&b).intervals(), &[(25, 31), (50, 55)]);
        assert_eq!(a.subtract(&b).intervals(), &[(10, 24), (56, 60)]);
        assert!(PortSet::full().complement().is_empty());
        assert!(PortSet::empty().complement().is_full());
    }
}
