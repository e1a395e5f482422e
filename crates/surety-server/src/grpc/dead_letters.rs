//! Dead-letter administration: `ListDeadLetters`, `ResendDeadLetters` and
//! `PurgeDeadLetters`, the gRPC face of REST's `.../dead-letters` routes
//! (`rest::dead_letters`), with the broker's bounds and page iterator.

use surety_broker::{
    BrokerError, DeadLetterPage, Selection, limits, validate_group_name, validate_topic_name,
};
use tonic::Status;

use super::convert;
use super::proto;
use super::status::{invalid_request, status_of};
use crate::state::AppState;

/// One page: up to `limit` dead letters (0 = the default) with ids above `after`, ending
/// early at [`limits::PAGE_BYTES`] (see [`read_page`]).
pub(super) async fn list(
    state: &AppState,
    req: proto::ListDeadLettersRequest,
) -> Result<proto::DeadLetterPage, Status> {
    check_names(&req.topic, &req.group)?;
    // proto3 cannot tell 0 from unset: 0 is REST's absent `limit`. Any other value goes
    // to the broker, which bounds it (`limits::MAX_PAGE`) as it does REST's.
    let limit = match req.limit {
        0 => limits::DEFAULT_DEAD_LETTER_PAGE,
        n => n as usize,
    };
    let page = state
        .broker
        .dead_letter_page(&req.topic, &req.group, req.after, limit)
        .await
        .map_err(|e| status_of(&e))?;
    // The reads are file reads: off the async workers.
    match tokio::task::spawn_blocking(move || read_page(page)).await {
        Ok(page) => page.map_err(|e| status_of(&e)),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(status_of(&BrokerError::ShuttingDown(format!(
            "dead-letter listing stopped: {e}"
        )))),
    }
}

/// The page as one answer. Besides the broker's own ends (`limit`, or
/// [`limits::PAGE_BYTES`] of payload) it also ends once payloads, keys and headers
/// together reach [`limits::PAGE_BYTES`]: REST streams its page, a gRPC answer is one
/// message held whole, and dead letters with large headers must not take it past the
/// message cap. Stopping early is safe: `next_cursor` is then the last id taken.
fn read_page(mut page: DeadLetterPage) -> Result<proto::DeadLetterPage, BrokerError> {
    let mut dead_letters = Vec::new();
    let mut bytes = 0;
    for d in page.by_ref() {
        let d = convert::dead_letter(d?);
        bytes += size(&d);
        dead_letters.push(d);
        if bytes >= limits::PAGE_BYTES {
            break;
        }
    }
    Ok(proto::DeadLetterPage {
        dead_letters,
        next: page.next_cursor(),
    })
}

/// The parts of a dead letter whose size has no small bound: payload, key, headers, reason.
fn size(d: &proto::DeadLetter) -> usize {
    let headers: usize = d.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    d.payload.len() + d.key.as_ref().map_or(0, Vec::len) + headers + d.reason.len()
}

/// Puts dead letters back into this group's delivery only. Unknown ids are skipped.
pub(super) async fn resend(
    state: &AppState,
    req: proto::DeadLetterSelection,
) -> Result<proto::ResendResponse, Status> {
    check_names(&req.topic, &req.group)?;
    let which = selection(req.ids, req.all)?;
    let resent = state
        .broker
        .resend(&req.topic, &req.group, &which)
        .await
        .map_err(|e| status_of(&e))?;
    tracing::info!(
        topic = req.topic,
        group = req.group,
        resent,
        "dead letters resent"
    );
    Ok(proto::ResendResponse {
        resent: resent as u64,
    })
}

/// Deletes dead letters for good (counted in the group's `dead_letters_purged`).
pub(super) async fn purge(
    state: &AppState,
    req: proto::DeadLetterSelection,
) -> Result<proto::PurgeResponse, Status> {
    check_names(&req.topic, &req.group)?;
    let which = selection(req.ids, req.all)?;
    let purged = state
        .broker
        .purge(&req.topic, &req.group, &which)
        .await
        .map_err(|e| status_of(&e))?;
    tracing::info!(
        topic = req.topic,
        group = req.group,
        purged,
        "dead letters purged"
    );
    Ok(proto::PurgeResponse {
        purged: purged as u64,
    })
}

/// Names first, as `Subscribe` checks them: an invalid name is `invalid_name` whatever
/// else is wrong with the call.
fn check_names(topic: &str, group: &str) -> Result<(), Status> {
    validate_topic_name(topic)
        .and_then(|()| validate_group_name(group))
        .map_err(|e| status_of(&BrokerError::InvalidName(e.to_string())))
}

/// Exactly one of a non-empty `ids` or `all: true`, as REST's `{"ids":[...]}` /
/// `{"all":true}`. proto3 has no absent list, so an empty `ids` counts as not given
/// (REST's `{"ids":[]}`, a resend of nothing, has no gRPC spelling).
fn selection(ids: Vec<u64>, all: bool) -> Result<Selection, Status> {
    match (ids.is_empty(), all) {
        (false, false) => Ok(Selection::Ids(ids)),
        (true, true) => Ok(Selection::All),
        _ => Err(invalid_request(
            "give exactly one of a non-empty `ids` or `all: true`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_is_exactly_one_of_ids_or_all() {
        assert_eq!(
            selection(vec![3, 1], false).unwrap(),
            Selection::Ids(vec![3, 1])
        );
        assert_eq!(selection(Vec::new(), true).unwrap(), Selection::All);
        for (ids, all) in [(Vec::new(), false), (vec![1], true)] {
            let s = selection(ids, all).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert_eq!(
                s.metadata().get(super::super::ERROR_CODE_METADATA).unwrap(),
                "invalid_request"
            );
        }
    }
}
