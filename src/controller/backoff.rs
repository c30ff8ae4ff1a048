//! Per-object backoff: fast at first, doubling, capped; reset once an object is healthy.

use crate::heap::ReleaseSpare;
use std::{collections::HashMap, sync::Mutex, time::Duration};

const FIRST: Duration = Duration::from_millis(500);
const CAP: Duration = Duration::from_secs(30);

/// Retry delays by object key.
#[derive(Default)]
pub struct Backoffs {
    attempts: Mutex<HashMap<String, u32>>,
}

impl Backoffs {
    /// The next delay for `key`: 0.5 s, 1 s, 2 s, ... up to 30 s.
    pub fn next(&self, key: &str) -> Duration {
        let Ok(mut attempts) = self.attempts.lock() else {
            return CAP;
        };
        let n = attempts.entry(key.to_owned()).or_default();
        let delay = FIRST.saturating_mul(2u32.saturating_pow(*n)).min(CAP);
        *n = n.saturating_add(1);
        delay
    }

    /// Keys with failures remembered.
    pub fn tracked(&self) -> usize {
        self.attempts.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// Forgets `key`'s failures.
    pub fn reset(&self, key: &str) {
        if let Ok(mut attempts) = self.attempts.lock() {
            attempts.remove(key);
            attempts.release_spare();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let b = Backoffs::default();
        let delays: Vec<_> = (0..8).map(|_| b.next("a").as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(b.next("b").as_millis(), 500);
        b.reset("a");
        assert_eq!(b.next("a").as_millis(), 500);
    }
}
