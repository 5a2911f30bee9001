//! `banter ingest`: accepts engagement events over HTTP (Meta webhooks, first-party events) and
//! from files (`banter replay`), normalizes them to [`banter_model::EngagementEvent`],
//! validates, and publishes them to `banter.events.v1` keyed by `account_id`. What cannot be
//! accepted goes to `banter.dlq.v1` with its reason and original payload.
//!
//! A 2xx answer means the broker acknowledged every accepted event and every dead letter of
//! the request, in one Kafka transaction: a request is published entirely or not at all (503).

pub mod normalize;
