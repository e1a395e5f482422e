//! Dead-letter administration over gRPC (`ListDeadLetters`, `ResendDeadLetters`,
//! `PurgeDeadLetters`) against a whole server on a socket, with nothing but the
//! generated client: the messages are published, consumed and nacked into the
//! dead-letter queue (`max_deliveries` 1) over gRPC too.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::TestServer;
use surety_broker::limits;
use surety_server::grpc::ERROR_CODE_METADATA;
use surety_wire::proto::{
    self, ConsumeRequest, DeadLetterSelection, ListDeadLettersRequest, consume_request::Kind as In,
    consume_response::Kind as Out, surety_client::SuretyClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

type Client = SuretyClient<Channel>;

async fn client(s: &TestServer) -> Client {
    SuretyClient::connect(s.base.clone())
        .await
        .unwrap()
        .max_decoding_message_size(surety_server::grpc::MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(surety_server::grpc::MAX_GRPC_MESSAGE_BYTES)
}

/// A topic whose first nack dead-letters a message.
async fn topic(c: &mut Client, name: &str) {
    c.create_topic(proto::CreateTopicRequest {
        topic: name.into(),
        config_json: r#"{"max_deliveries":1,"partitions":2}"#.into(),
    })
    .await
    .unwrap();
}

async fn publish(c: &mut Client, topic: &str, messages: Vec<proto::Message>) {
    c.publish(proto::PublishRequest {
        topic: topic.into(),
        messages,
    })
    .await
    .unwrap();
}

fn text(t: &str) -> proto::Message {
    proto::Message {
        payload: t.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Consumes `n` messages as `group` on one Consume stream, nacks them all with `reason`
/// and drains the stream (so it leases nothing more, e.g. a resend made next); returns
/// their payloads in delivery order.
async fn consume_and_nack(
    c: &mut Client,
    topic: &str,
    group: &str,
    n: usize,
    reason: &str,
) -> Vec<Vec<u8>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(ConsumeRequest {
        kind: Some(In::Subscribe(proto::Subscribe {
            topic: topic.into(),
            group: group.into(),
            credits: n as u32,
            lease_ms: 0,
        })),
    })
    .unwrap();
    let mut stream = c
        .consume(UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut receipts = Vec::new();
    let mut payloads = Vec::new();
    while receipts.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("deliveries in time")
            .unwrap()
            .expect("the stream goes on");
        match r.kind {
            Some(Out::Deliveries(b)) => {
                for d in b.deliveries {
                    receipts.push(d.receipt);
                    payloads.push(d.payload);
                }
            }
            other => panic!("expected deliveries, got {other:?}"),
        }
    }
    assert_eq!(receipts.len(), n, "no more than the window");
    tx.send(ConsumeRequest {
        kind: Some(In::Nack(proto::Nack {
            request_id: 1,
            receipts,
            delay_ms: 0,
            reason: reason.into(),
        })),
    })
    .unwrap();
    tx.send(ConsumeRequest {
        kind: Some(In::Drain(proto::Drain {})),
    })
    .unwrap();
    // Answered in either order: the nack is settled in a task of its own.
    let (mut nacked, mut drained) = (false, false);
    while !(nacked && drained) {
        let r = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the nack and the drain answered in time")
            .unwrap()
            .expect("the stream goes on");
        match r.kind {
            Some(Out::NackResult(res)) => {
                assert_eq!((res.request_id, res.nacked), (1, n as u64), "{res:?}");
                assert!(res.errors.is_empty(), "{res:?}");
                nacked = true;
            }
            Some(Out::Drained(_)) => drained = true,
            other => panic!("expected the NackResult and Drained, got {other:?}"),
        }
    }
    payloads
}

async fn list(
    c: &mut Client,
    topic: &str,
    group: &str,
    after: Option<u64>,
    limit: u32,
) -> Result<proto::DeadLetterPage, Status> {
    c.list_dead_letters(ListDeadLettersRequest {
        topic: topic.into(),
        group: group.into(),
        after,
        limit,
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Every dead letter of the group, page by page of `limit`; also the page sizes.
async fn list_all(
    c: &mut Client,
    topic: &str,
    group: &str,
    limit: u32,
) -> (Vec<proto::DeadLetter>, Vec<usize>) {
    let (mut all, mut sizes, mut after) = (Vec::new(), Vec::new(), None);
    loop {
        let page = list(c, topic, group, after, limit).await.unwrap();
        sizes.push(page.dead_letters.len());
        all.extend(page.dead_letters);
        match page.next {
            Some(next) => {
                assert_eq!(Some(next), all.last().map(|d| d.id), "next is the last id");
                after = Some(next);
            }
            None => return (all, sizes),
        }
    }
}

fn ids(v: Vec<u64>) -> DeadLetterSelection {
    DeadLetterSelection {
        topic: "t".into(),
        group: "g".into(),
        ids: v,
        all: false,
    }
}

fn all() -> DeadLetterSelection {
    DeadLetterSelection {
        topic: "t".into(),
        group: "g".into(),
        ids: Vec::new(),
        all: true,
    }
}

/// A refusal: the status code and the stable code in the metadata.
fn assert_refused<T: std::fmt::Debug>(got: Result<T, Status>, grpc: Code, code: &str) {
    let s = got.expect_err("refused");
    assert_eq!(
        (
            s.code(),
            s.metadata()
                .get(ERROR_CODE_METADATA)
                .and_then(|v| v.to_str().ok())
        ),
        (grpc, Some(code)),
        "{s:?}"
    );
    assert!(!s.message().is_empty(), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_page_by_page_with_their_message() {
    let s = TestServer::start().await;
    let mut c = client(&s).await;
    topic(&mut c, "t").await;
    // Nothing dead-lettered yet, and a group that does not exist: an empty last page.
    let page = list(&mut c, "t", "g", None, 0).await.unwrap();
    assert_eq!((page.dead_letters.len(), page.next), (0, None));

    let mut messages: Vec<_> = (0..4).map(|i| text(&format!("m{i}"))).collect();
    messages.push(proto::Message {
        payload: b"full".to_vec(),
        key: Some(b"k".to_vec()),
        headers: HashMap::from([("h".to_owned(), "v".to_owned())]),
        id: Some("msg-1".into()),
        producer_id: Some("p".into()),
        sequence: Some(7),
        not_before_ms: None,
    });
    publish(&mut c, "t", messages).await;
    let mut nacked = consume_and_nack(&mut c, "t", "g", 5, "cannot handle").await;

    // Pages of 2: 2, 2, 1, each `next` the page's last id, ids ascending.
    let (letters, sizes) = list_all(&mut c, "t", "g", 2).await;
    assert_eq!(sizes, [2, 2, 1]);
    assert!(letters.windows(2).all(|w| w[0].id < w[1].id), "{letters:?}");
    // limit 0 is the default page (100): all five, and no next page.
    let page = list(&mut c, "t", "g", None, 0).await.unwrap();
    assert_eq!((page.dead_letters, page.next), (letters.clone(), None));
    // `after` the last id: empty.
    let last = letters.last().unwrap().id;
    let page = list(&mut c, "t", "g", Some(last), 0).await.unwrap();
    assert_eq!((page.dead_letters.len(), page.next), (0, None));

    let mut listed: Vec<_> = letters.iter().map(|d| d.payload.clone()).collect();
    listed.sort();
    nacked.sort();
    assert_eq!(listed, nacked);
    for d in &letters {
        assert_eq!(d.group, "g");
        assert_eq!(d.reason, "cannot handle");
        assert_eq!(d.attempts, 1);
        assert!(d.partition < 2, "{d:?}");
        let (first, last) = (d.first_delivered_ms.unwrap(), d.last_delivered_ms.unwrap());
        assert!(
            first > 0 && first <= last && last <= d.dead_lettered_ms,
            "{d:?}"
        );
        assert!(d.timestamp_ms > 0, "{d:?}");
    }
    let full = letters.iter().find(|d| d.payload == b"full").unwrap();
    assert_eq!(full.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(
        full.headers,
        HashMap::from([("h".to_owned(), "v".to_owned())])
    );
    assert_eq!(full.message_id.as_deref(), Some("msg-1"));
    assert_eq!(full.producer_id.as_deref(), Some("p"));
    assert_eq!(full.sequence, Some(7));
    let plain = letters.iter().find(|d| d.payload == b"m0").unwrap();
    assert_eq!(
        (
            &plain.key,
            &plain.message_id,
            &plain.producer_id,
            plain.sequence
        ),
        (&None, &None, &None, None)
    );
    assert!(
        plain.headers.is_empty(),
        "no surety.dl.* headers: {plain:?}"
    );
    s.stop().await;
}

/// A page ends once it holds `limits::PAGE_BYTES`, of payload (the broker's page) or of
/// headers (so a gRPC answer, held whole, stays far below the message cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_ends_at_page_bytes() {
    const SIZE: usize = 1_000_000;
    let s = TestServer::start().await;
    let mut c = client(&s).await;
    let fit = limits::PAGE_BYTES.div_ceil(SIZE);
    let big_payload = |i: usize| proto::Message {
        payload: vec![i as u8; SIZE],
        ..Default::default()
    };
    let big_headers = |i: usize| proto::Message {
        payload: vec![i as u8],
        headers: HashMap::from([("h".to_owned(), "x".repeat(SIZE))]),
        ..Default::default()
    };
    for (name, make) in [
        ("payloads", &big_payload as &dyn Fn(usize) -> _),
        ("headers", &big_headers),
    ] {
        topic(&mut c, name).await;
        publish(&mut c, name, (0..fit + 1).map(make).collect()).await;
        consume_and_nack(&mut c, name, "g", fit + 1, "too big").await;

        let first = list(&mut c, name, "g", None, 100).await.unwrap();
        assert_eq!(
            first.dead_letters.len(),
            fit,
            "{name}: the page stops at PAGE_BYTES"
        );
        assert_eq!(
            first.next,
            first.dead_letters.last().map(|d| d.id),
            "{name}"
        );
        let rest = list(&mut c, name, "g", first.next, 100).await.unwrap();
        assert_eq!((rest.dead_letters.len(), rest.next), (1, None), "{name}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_dead_letters_are_delivered_to_the_group_again_and_purged_ones_are_gone() {
    let s = TestServer::start().await;
    let mut c = client(&s).await;
    topic(&mut c, "t").await;
    publish(
        &mut c,
        "t",
        (0..4).map(|i| text(&format!("m{i}"))).collect(),
    )
    .await;
    consume_and_nack(&mut c, "t", "g", 4, "first round").await;
    let (letters, _) = list_all(&mut c, "t", "g", 100).await;
    assert_eq!(letters.len(), 4);

    // One resent (a repeated id and an unknown one change nothing): the group gets it
    // again, and its second failure dead-letters it anew.
    let one = letters[0].clone();
    let resent = c
        .resend_dead_letters(ids(vec![one.id, one.id, 999_999]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resent.resent, 1);
    let (left, _) = list_all(&mut c, "t", "g", 100).await;
    assert_eq!(left, letters[1..]);
    let again = consume_and_nack(&mut c, "t", "g", 1, "second round").await;
    assert_eq!(again, vec![one.payload.clone()]);
    let (now, _) = list_all(&mut c, "t", "g", 100).await;
    assert_eq!(now.len(), 4);
    let back = now.last().unwrap();
    assert_eq!(
        (&back.payload, back.reason.as_str()),
        (&one.payload, "second round")
    );
    assert!(back.id > one.id, "a new dead letter: {back:?}");

    // Purge by id, then all.
    let purged = c
        .purge_dead_letters(ids(vec![now[0].id]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.purged, 1);
    assert_eq!(list_all(&mut c, "t", "g", 100).await.0, now[1..]);
    let purged = c.purge_dead_letters(all()).await.unwrap().into_inner();
    assert_eq!(purged.purged, 3);
    let page = list(&mut c, "t", "g", None, 0).await.unwrap();
    assert_eq!((page.dead_letters.len(), page.next), (0, None));
    // Nothing left to resend or purge.
    assert_eq!(
        c.resend_dead_letters(all())
            .await
            .unwrap()
            .into_inner()
            .resent,
        0
    );
    assert_eq!(
        c.purge_dead_letters(all())
            .await
            .unwrap()
            .into_inner()
            .purged,
        0
    );

    // The counters the group shows agree.
    let info = c
        .describe_topic(proto::DescribeTopicRequest { topic: "t".into() })
        .await
        .unwrap()
        .into_inner();
    let g = info.groups.iter().find(|g| g.name == "g").unwrap();
    assert_eq!(g.dead_letters, 0);
    let (_, v) = s.get("/v1/topics/t/groups/g").await;
    assert_eq!(
        (
            v["dead_letters_resent"].as_u64(),
            v["dead_letters_purged"].as_u64()
        ),
        (Some(1), Some(4)),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_stable_codes() {
    let s = TestServer::start().await;
    let mut c = client(&s).await;
    topic(&mut c, "t").await;
    publish(&mut c, "t", vec![text("x")]).await;
    consume_and_nack(&mut c, "t", "g", 1, "no").await;

    // The page bound is the broker's (limits::MAX_PAGE), as on REST.
    let max = limits::MAX_PAGE as u32;
    assert_eq!(
        list(&mut c, "t", "g", None, max)
            .await
            .unwrap()
            .dead_letters
            .len(),
        1
    );
    for limit in [max + 1, 5000] {
        assert_refused(
            list(&mut c, "t", "g", None, limit).await,
            Code::InvalidArgument,
            "invalid_request",
        );
    }

    // Unknown topic.
    assert_refused(
        list(&mut c, "nope", "g", None, 0).await,
        Code::NotFound,
        "topic_not_found",
    );
    let on_nope = |mut sel: DeadLetterSelection| {
        sel.topic = "nope".into();
        sel
    };
    assert_refused(
        c.resend_dead_letters(on_nope(all())).await,
        Code::NotFound,
        "topic_not_found",
    );
    assert_refused(
        c.purge_dead_letters(on_nope(ids(vec![1]))).await,
        Code::NotFound,
        "topic_not_found",
    );

    // Exactly one of ids or all.
    let both = DeadLetterSelection {
        ids: vec![1],
        ..all()
    };
    let neither = ids(Vec::new());
    for sel in [both, neither] {
        assert_refused(
            c.resend_dead_letters(sel.clone()).await,
            Code::InvalidArgument,
            "invalid_request",
        );
        assert_refused(
            c.purge_dead_letters(sel).await,
            Code::InvalidArgument,
            "invalid_request",
        );
    }

    // Invalid names, before anything else about the call.
    let bad_group = |mut sel: DeadLetterSelection| {
        sel.group = "bad/group".into();
        sel
    };
    assert_refused(
        list(&mut c, "t", "bad/group", None, 0).await,
        Code::InvalidArgument,
        "invalid_name",
    );
    assert_refused(
        list(&mut c, "nope", "", None, 5000).await,
        Code::InvalidArgument,
        "invalid_name",
    );
    assert_refused(
        list(&mut c, "bad topic", "g", None, 0).await,
        Code::InvalidArgument,
        "invalid_name",
    );
    assert_refused(
        c.resend_dead_letters(bad_group(all())).await,
        Code::InvalidArgument,
        "invalid_name",
    );
    assert_refused(
        c.purge_dead_letters(bad_group(ids(vec![1]))).await,
        Code::InvalidArgument,
        "invalid_name",
    );

    // None of it touched the dead letter.
    let page = list(&mut c, "t", "g", None, 0).await.unwrap();
    assert_eq!(page.dead_letters.len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_calls_need_the_token_when_auth_is_on() {
    let s = TestServer::start_with(|settings, dir| {
        let file = dir.join("tokens");
        std::fs::write(&file, "secret\n").unwrap();
        settings.auth_token_file = Some(file);
    })
    .await;
    let mut c = client(&s).await;
    let req = ListDeadLettersRequest {
        topic: "t".into(),
        group: "g".into(),
        after: None,
        limit: 0,
    };
    assert_refused(
        c.list_dead_letters(req.clone()).await,
        Code::Unauthenticated,
        "unauthorized",
    );
    assert_refused(
        c.purge_dead_letters(all()).await,
        Code::Unauthenticated,
        "unauthorized",
    );
    let mut authed = tonic::Request::new(req);
    authed
        .metadata_mut()
        .insert("authorization", "Bearer secret".parse().unwrap());
    // Past auth: the topic does not exist.
    assert_refused(
        c.list_dead_letters(authed).await,
        Code::NotFound,
        "topic_not_found",
    );
    s.stop().await;
}
