//! Which master of a Redis Cluster owns a channel, for sharded Pub/Sub.
//!
//! Redis Cluster hashes every key, and with sharded Pub/Sub every channel name, to one of
//! 16 384 slots: `CRC16(name) mod 16384`, where only the part between the first `{` and the
//! next `}` is hashed when that part is not empty (a hash tag: `{room}.a` and `{room}.b` share
//! a slot). Each slot belongs to one master; `CLUSTER SLOTS` says which.

use redis::Value;

use super::topology::host_port;

/// The number of hash slots of a Redis Cluster.
pub(super) const SLOTS: u16 = 16384;

/// The slot of a channel (or key), hash tags respected.
pub(super) fn slot(name: &[u8]) -> u16 {
    let hashed = match name.iter().position(|b| *b == b'{') {
        Some(open) => match name[open + 1..].iter().position(|b| *b == b'}') {
            Some(len) if len > 0 => &name[open + 1..open + 1 + len],
            _ => name,
        },
        None => name,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// Which master serves which slots, as one `CLUSTER SLOTS` reply said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SlotMap {
    /// `(first slot, last slot, master index)`, sorted by first slot.
    ranges: Vec<(u16, u16, usize)>,
    /// The masters, `host:port`, in the order first seen.
    masters: Vec<String>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [ip, port, id], replicas...], ...]`. An
    /// empty ip means the node that answered (`current_host`). Fails when no slot has a master.
    pub(super) fn from_cluster_slots(reply: &Value, current_host: &str) -> Result<Self, String> {
        let mut map = SlotMap {
            ranges: Vec::new(),
            masters: Vec::new(),
        };
        let Value::Array(ranges) = reply else {
            return Err(format!("CLUSTER SLOTS answered {reply:?}"));
        };
        for range in ranges {
            let Value::Array(parts) = range else {
                continue;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            let (Some(Value::BulkString(ip)), Some(Value::Int(port))) =
                (master.first(), master.get(1))
            else {
                continue;
            };
            let (Ok(start), Ok(end), Ok(port)) = (
                u16::try_from(*start),
                u16::try_from(*end),
                u16::try_from(*port),
            ) else {
                continue;
            };
            if start > end || end >= SLOTS {
                continue;
            }
            let ip = String::from_utf8_lossy(ip);
            let host = if ip.is_empty() { current_host } else { &ip };
            let addr = host_port(host, port);
            let index = match map.masters.iter().position(|m| *m == addr) {
                Some(index) => index,
                None => {
                    map.masters.push(addr);
                    map.masters.len() - 1
                }
            };
            map.ranges.push((start, end, index));
        }
        if map.ranges.is_empty() {
            return Err("the cluster reports no slot with a master".to_owned());
        }
        map.ranges.sort_unstable();
        Ok(map)
    }

    /// The masters, `host:port`.
    pub(super) fn masters(&self) -> &[String] {
        &self.masters
    }

    /// The index into [`SlotMap::masters`] of the master that owns `channel`'s slot; `None`
    /// when no master serves it.
    pub(super) fn owner(&self, channel: &[u8]) -> Option<usize> {
        let slot = slot(channel);
        let at = self.ranges.partition_point(|(start, _, _)| *start <= slot);
        let (_, end, master) = *self.ranges.get(at.checked_sub(1)?)?;
        (slot <= end).then_some(master)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn whole(name: &[u8]) -> u16 {
        crc16::State::<crc16::XMODEM>::calculate(name) % SLOTS
    }

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Known answers of `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 0x31c3 % SLOTS);
        assert_eq!(slot(b""), 0);
        // A hash tag: only the part inside the first braces counts, when it is not empty.
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{user1000}.followers"), slot(b"{user1000}.following"));
        // An empty tag hashes the whole name.
        assert_eq!(slot(b"foo{}{bar}"), whole(b"foo{}{bar}"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(slot(b"{unclosed"), whole(b"{unclosed"));
    }

    fn node(ip: &str, port: i64) -> Value {
        Value::Array(vec![bulk(ip), Value::Int(port), bulk("id")])
    }

    #[test]
    fn the_map_routes_every_slot_to_its_master() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("10.0.0.2", 7001),
                node("10.0.0.5", 7004),
            ]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("", 7000)]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("::1", 7002),
            ]),
            Value::Array(vec![Value::Int(1), Value::Int(0), node("bad", 1)]),
            Value::Int(7),
        ]);
        let map = SlotMap::from_cluster_slots(&reply, "seed").unwrap();
        assert_eq!(map.masters(), ["10.0.0.2:7001", "seed:7000", "[::1]:7002"]);
        let owner = |name: &str| {
            map.owner(name.as_bytes())
                .map(|i| map.masters()[i].as_str())
        };
        assert_eq!(owner("bar"), Some("seed:7000")); // slot 5061
        assert_eq!(owner("foo"), Some("[::1]:7002")); // slot 12182
        assert_eq!(owner("{foo}.x"), Some("[::1]:7002"));
        assert_eq!(owner("hello"), Some("seed:7000")); // slot 866
    }

    #[test]
    fn slots_without_a_master_have_no_owner() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(100),
            node("a", 1),
        ])]);
        let map = SlotMap::from_cluster_slots(&reply, "seed").unwrap();
        assert_eq!(map.owner(b"bar"), None);
        assert!(SlotMap::from_cluster_slots(&Value::Array(vec![]), "seed").is_err());
        assert!(SlotMap::from_cluster_slots(&Value::Nil, "seed").is_err());
    }
}
