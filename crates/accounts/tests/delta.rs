//! The incremental path must always agree with the full computation: random edit sequences over
//! all four key sources, each step checked against `desired_keys` of the new snapshot.

use chrono::{TimeZone, Utc};
use gce_accounts::decide::delta::{Inputs, update};
use gce_accounts::desired_keys;
use std::collections::BTreeMap;

fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn key(seed: u8) -> String {
    let mut blob = vec![0, 0, 0, 11];
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&[0, 0, 0, 32]);
    blob.extend((0..32).map(|i| seed.wrapping_mul(31).wrapping_add(i)));
    format!("ssh-ed25519 {}", b64(&blob))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn random_line(r: &mut Rng) -> String {
    let user = ["alice", "bob", "carol", "dave", "erin", "-bad", "root"][r.next(7)];
    let k = key(r.next(6) as u8);
    match r.next(8) {
        0 => format!(
            "{user}:{k} google-ssh {{\"userName\":\"x\",\"expireOn\":\"2030-01-01T00:00:0{}+0000\"}}",
            r.next(9)
        ),
        1 => format!(
            "{user}:{k} google-ssh {{\"userName\":\"x\",\"expireOn\":\"2020-01-01T00:00:00+0000\"}}"
        ),
        2 => format!("{user}:{k} c\r"),
        3 => "no colon here".to_string(),
        4 => String::new(),
        _ => format!("{user}:{k} comment"),
    }
}

#[test]
fn incremental_updates_equal_full_recomputation() {
    let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
    let mut r = Rng(0x9e3779b97f4a7c15);
    let mut incremental_steps = 0;
    for _round in 0..60 {
        let mut values: [Vec<String>; 4] = Default::default();
        for v in values.iter_mut() {
            for _ in 0..r.next(6) {
                v.push(random_line(&mut r));
            }
        }
        let flags = r.next(4);
        let build = |values: &[Vec<String>; 4]| {
            let mut inst = BTreeMap::new();
            let mut proj = BTreeMap::new();
            if flags == 1 {
                inst.insert("block-project-ssh-keys".to_string(), "TRUE".to_string());
            }
            for (i, v) in values.iter().enumerate() {
                if i == 0 && flags != 2 {
                    continue; // the legacy value is absent in most rounds
                }
                let joined = v.join("\n");
                match i {
                    0 => inst.insert("sshKeys".to_string(), joined),
                    1 => inst.insert("ssh-keys".to_string(), joined),
                    2 => proj.insert("ssh-keys".to_string(), joined),
                    _ => proj.insert("sshKeys".to_string(), joined),
                };
            }
            (inst, proj)
        };
        let (inst, proj) = build(&values);
        let mut inputs = Inputs::of(&inst, &proj);
        let mut desired = desired_keys(&inst, &proj, now);
        for _step in 0..15 {
            let src = r.next(4);
            let v = &mut values[src];
            match r.next(3) {
                0 if !v.is_empty() => {
                    let i = r.next(v.len());
                    v[i] = random_line(&mut r);
                }
                1 => {
                    let i = r.next(v.len() + 1);
                    v.insert(i, random_line(&mut r));
                }
                _ if !v.is_empty() => {
                    let i = r.next(v.len());
                    v.remove(i);
                }
                _ => v.push(random_line(&mut r)),
            }
            let (inst, proj) = build(&values);
            let next = Inputs::of(&inst, &proj);
            let full = desired_keys(&inst, &proj, now);
            match update(&inputs, &mut desired, &next, now) {
                Some(_) => incremental_steps += 1,
                None => desired = desired_keys(&inst, &proj, now),
            }
            assert_eq!(
                desired.users, full.users,
                "users differ after an edit: {values:?}"
            );
            assert_eq!(desired.next_expiry, full.next_expiry);
            assert_eq!(desired.project_keys_blocked, full.project_keys_blocked);
            assert_eq!(desired.rejected.len(), full.rejected.len(), "{values:?}");
            inputs = next;
        }
    }
    assert!(
        incremental_steps > 300,
        "the incremental path was taken only {incremental_steps} times"
    );
}
