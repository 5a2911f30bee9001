//! What the workload tests share: the generator's CTA posts as campaigns, and a pipeline's
//! outputs gathered as [`Observed`] for the check `banter verify` runs.

#![allow(dead_code)] // each test binary uses its part

use banter_stream::cta::{Campaign, Matcher};
use banter_stream::Outputs;
use banter_workload::check::Observed;
use banter_workload::Workload;

/// The generator's CTA posts as campaigns.
pub fn campaigns(w: &Workload) -> Vec<Campaign> {
    w.posts
        .iter()
        .filter_map(|p| {
            p.cta
                .as_ref()
                .map(|(id, kw)| Campaign::on_post(id, &p.account_id, &p.content_id, kw))
        })
        .collect()
}

/// The matcher of [`campaigns`].
pub fn matcher(w: &Workload) -> Matcher {
    Matcher::new(&campaigns(w)).unwrap_or_else(|e| panic!("{e}"))
}

/// Moves `out` into `o` as a reader of the output topics would see it (the highest revision
/// of a row wins); returns how many events it dead-lettered as too late.
pub fn observe(out: &mut Outputs, o: &mut Observed) -> u64 {
    let too_late = out.too_late.len() as u64;
    for r in out.rollups.drain(..) {
        o.add_rollup(r);
    }
    for f in out.funnels.drain(..) {
        o.add_funnel(f);
    }
    for c in out.conversations.drain(..) {
        o.add_conversation(c);
    }
    for a in &out.alerts {
        o.add_alert(a);
    }
    out.clear();
    too_late
}
