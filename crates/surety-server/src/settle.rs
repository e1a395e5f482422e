//! The ack / nack batch rule shared by REST and gRPC: each receipt stands on its own.
//! The valid ones are applied (one journal commit, by `Broker::ack_each` /
//! `Broker::nack_each`), the refused ones are listed with their index, and the request
//! fails only when every receipt of a non-empty batch was refused, with the first
//! refusal.

use surety_broker::BrokerError;

/// How one ack or nack batch went.
#[derive(Debug)]
pub struct Batch {
    /// Receipts whose state changed (repeats of an earlier settle count zero).
    pub applied: usize,
    /// The refused receipts: their index in the request, and why.
    pub errors: Vec<(usize, BrokerError)>,
}

impl Batch {
    /// Applies the rule to the per-receipt outcomes.
    pub fn judge(outcomes: Vec<Result<bool, BrokerError>>) -> Result<Batch, BrokerError> {
        let all_refused = !outcomes.is_empty() && outcomes.iter().all(Result::is_err);
        let mut batch = Batch {
            applied: 0,
            errors: Vec::new(),
        };
        for (i, o) in outcomes.into_iter().enumerate() {
            match o {
                Ok(changed) => batch.applied += usize::from(changed),
                Err(e) if all_refused => return Err(e),
                Err(e) => batch.errors.push((i, e)),
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad() -> Result<bool, BrokerError> {
        Err(BrokerError::InvalidName("x".into()))
    }

    #[test]
    fn only_an_all_refused_batch_fails() {
        let b = Batch::judge(vec![Ok(true), bad(), Ok(false)]).unwrap();
        assert_eq!(b.applied, 1);
        assert_eq!(b.errors.len(), 1);
        assert_eq!(b.errors[0].0, 1);
        assert!(Batch::judge(vec![bad(), bad()]).is_err());
        let empty = Batch::judge(Vec::new()).unwrap();
        assert_eq!((empty.applied, empty.errors.len()), (0, 0));
    }
}
