//! Shrinking a failing plan: delta debugging over its clients, faults and operations, then its
//! times and settings, keeping only candidates that still fail the same way.
//!
//! The passes edit the plan as JSON, so that every list the plan has (operations, faults,
//! transport faults, and whatever lists it grows) is shrunk without this file knowing it; each
//! candidate is then read back as a [`Plan`] and checked with `Plan::validate`, and invalid
//! ones are skipped.
//!
//! The algorithm knows nothing of processes: an [`Oracle`] runs a batch of candidate plans and
//! says which still fail with the target [`Signature`]. Of a batch, the first candidate (in the
//! order they were made) that still fails is taken, so the result does not depend on which
//! worker finished first.

use std::fmt;
use std::ops::Range;

use drill_reports::{Outcome, Summary};
use drill_scenarios::plan::Plan;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::CliError;

/// How a run fails: its outcome and the invariant of its first violation. A shrunk plan must
/// fail with the same signature, so that shrinking never trades one bug for another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub outcome: Outcome,
    /// The first violation's invariant id (`LIVE-DRAIN` for a liveness failure).
    pub invariant: Option<String>,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.invariant {
            Some(id) => write!(f, "{} ({id})", self.outcome),
            None => write!(f, "{}", self.outcome),
        }
    }
}

/// The signature of a failing run, or `None` for a run that passed.
pub fn is_failing(summary: &Summary) -> Option<Signature> {
    (summary.outcome != Outcome::Pass).then(|| Signature { outcome: summary.outcome, invariant: summary.first_violation().map(|v| v.invariant.clone()) })
}

/// What shrinking counts: the parts of a plan a reader has to take in. Every list of the plan
/// whose name holds `fault` (scheduled faults, transport faults, ...) counts as faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    pub clients: usize,
    pub ops: usize,
    pub faults: usize,
    /// When the faults end and the liveness phase starts.
    pub heal_at_ms: u64,
    pub liveness_ms_max: u64,
}

impl Size {
    /// The size of `plan`.
    pub fn of(plan: &Plan) -> Size {
        let value = to_value(plan);
        let faults = lists(&value).iter().filter(|name| name.contains("fault")).map(|name| list_len(&value, name)).sum();
        Size { clients: plan.clients.len(), ops: plan.ops.len(), faults, heal_at_ms: plan.heal_at_ms, liveness_ms_max: plan.liveness_ms_max }
    }

    /// Operations and faults together, the number the shrinker drives down.
    pub fn items(&self) -> usize {
        self.ops + self.faults
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        write!(
            f,
            "{}, {}, {}, heal at {} ms, liveness bound {} ms",
            n(self.clients, "client", "clients"),
            n(self.ops, "op", "ops"),
            n(self.faults, "fault", "faults"),
            self.heal_at_ms,
            self.liveness_ms_max
        )
    }
}

/// Runs candidates for the shrinker.
pub trait Oracle {
    /// How many candidates one call to [`Oracle::still_fails`] may take.
    fn width(&self) -> usize;
    /// For each candidate, whether it still fails with the target signature; `None` once the
    /// budget (runs or time) is spent, which ends shrinking.
    fn still_fails(&mut self, candidates: &[Plan]) -> Result<Option<Vec<bool>>, CliError>;
    /// Called after each accepted candidate, for progress output.
    fn accepted(&mut self, _plan: &Plan) {}
}

/// Why shrinking stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// No candidate of any pass fails the same way: the plan is as small as this shrinker gets.
    Fixpoint,
    /// The run or time budget ran out first.
    Budget,
    /// SIGINT or SIGTERM stopped it; the plan is the smallest found so far, not run again.
    Interrupted,
}

/// The result of [`shrink`].
pub struct Shrunk {
    pub plan: Plan,
    pub stop: Stop,
    /// Candidates skipped because they were not valid plans.
    pub invalid: u64,
}

/// Shrinks `plan`, which fails with the oracle's signature, as far as the budget allows.
pub fn shrink(plan: Plan, oracle: &mut dyn Oracle) -> Result<Shrunk, CliError> {
    let mut s = Shrinker { best: plan, oracle, invalid: 0 };
    let stop = s.run()?;
    Ok(Shrunk { plan: s.best, stop, invalid: s.invalid })
}

/// A pass either goes on or finds the budget spent.
type Flow = Result<bool, CliError>;

struct Shrinker<'a> {
    best: Plan,
    oracle: &'a mut dyn Oracle,
    invalid: u64,
}

impl Shrinker<'_> {
    /// Runs every pass until a whole round changes nothing or the budget is spent.
    fn run(&mut self) -> Result<Stop, CliError> {
        loop {
            let before = self.best.clone();
            let finished = self.clients()? && self.lists()? && self.times()? && self.knobs()?;
            if !finished {
                return Ok(Stop::Budget);
            }
            if self.best == before {
                return Ok(Stop::Fixpoint);
            }
        }
    }

    /// Drops one client at a time, with its operations and every fault that names it.
    fn clients(&mut self) -> Flow {
        loop {
            if self.best.clients.len() <= 1 {
                return Ok(true);
            }
            let candidates: Vec<Value> = (0..self.best.clients.len()).rev().map(|i| without_client(&self.best, i)).collect();
            match self.first_failing(candidates)? {
                Found::Plan(p) => self.accept(*p),
                Found::None => return Ok(true),
                Found::Budget => return Ok(false),
            }
        }
    }

    /// Every list of the plan but its clients, fault lists first, then operations and the rest.
    fn lists(&mut self) -> Flow {
        let value = to_value(&self.best);
        let mut names: Vec<String> = lists(&value).into_iter().filter(|n| n != "clients").collect();
        names.sort_by_key(|n| (!n.contains("fault"), n != "ops", n.clone()));
        for name in names {
            if !self.ddmin(&name)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Zeller's ddmin over one list: remove one of `n` chunks at a time, halving the chunks
    /// when none can go, down to single items.
    fn ddmin(&mut self, list: &str) -> Flow {
        let mut chunks = 2;
        loop {
            let len = list_len(&to_value(&self.best), list);
            if len == 0 {
                return Ok(true);
            }
            chunks = chunks.min(len);
            let candidates: Vec<Value> = split(len, chunks).into_iter().map(|r| without(&self.best, list, r)).collect();
            match self.first_failing(candidates)? {
                Found::Plan(p) => {
                    self.accept(*p);
                    chunks = (chunks - 1).max(2);
                }
                Found::None if chunks < len => chunks = (chunks * 2).min(len),
                Found::None => return Ok(true),
                Found::Budget => return Ok(false),
            }
        }
    }

    /// Moves everything earlier so that the first operation or fault is at 0 ms, shortens the
    /// fault phase to just past the last one, and halves the liveness bound, while the run
    /// still fails the same way.
    fn times(&mut self) -> Flow {
        loop {
            let value = to_value(&self.best);
            let times = event_times(&value);
            let mut candidates = Vec::new();
            let first_ms = times.iter().copied().min().unwrap_or(0);
            if first_ms > 0 {
                candidates.push(shifted(&value, first_ms));
            }
            let last_ms = times.iter().copied().max().unwrap_or(0);
            if last_ms + 1 < self.best.heal_at_ms {
                candidates.push(with_field(&value, "heal_at_ms", last_ms + 1));
            }
            if self.best.liveness_ms_max > 1 {
                candidates.push(with_field(&value, "liveness_ms_max", self.best.liveness_ms_max / 2));
            }
            match self.first_failing(candidates)? {
                Found::Plan(p) => self.accept(*p),
                Found::None => return Ok(true),
                Found::Budget => return Ok(false),
            }
        }
    }

    /// Turns settings off one at a time (a number to absent or 0, a flag to false): fault
    /// rates, latencies, optional features such as server retention. The plan's identity
    /// (seed, scenario, profile) and its times are left to the other passes.
    fn knobs(&mut self) -> Flow {
        loop {
            let value = to_value(&self.best);
            let candidates: Vec<Value> = leaves(&value).iter().flat_map(|path| simpler(&value, path)).collect();
            match self.first_failing(candidates)? {
                Found::Plan(p) => self.accept(*p),
                Found::None => return Ok(true),
                Found::Budget => return Ok(false),
            }
        }
    }

    fn accept(&mut self, plan: Plan) {
        self.oracle.accepted(&plan);
        self.best = plan;
    }

    /// The first valid candidate that still fails, trying them in batches of the oracle's width.
    fn first_failing(&mut self, candidates: Vec<Value>) -> Result<Found, CliError> {
        let before = candidates.len();
        let valid: Vec<Plan> = candidates.into_iter().filter_map(valid_plan).collect();
        self.invalid += (before - valid.len()) as u64;
        for batch in valid.chunks(self.oracle.width().max(1)) {
            let Some(verdicts) = self.oracle.still_fails(batch)? else {
                return Ok(Found::Budget);
            };
            if let Some(i) = verdicts.iter().position(|fails| *fails) {
                return Ok(Found::Plan(Box::new(batch[i].clone())));
            }
            if verdicts.len() < batch.len() {
                // The budget ran out part way through the batch.
                return Ok(Found::Budget);
            }
        }
        Ok(Found::None)
    }
}

enum Found {
    Plan(Box<Plan>),
    None,
    Budget,
}

/// The plan as JSON, which the passes edit so that they cover every list the plan has.
fn to_value(plan: &Plan) -> Value {
    serde_json::to_value(plan).expect("plans serialize")
}

/// A candidate as a plan, if it is one a run accepts.
fn valid_plan(value: Value) -> Option<Plan> {
    let plan: Plan = serde_json::from_value(value).ok()?;
    drill_scenarios::check(&plan).ok().map(|()| plan)
}

/// The names of the plan's top-level lists.
fn lists(value: &Value) -> Vec<String> {
    let Some(object) = value.as_object() else {
        return Vec::new();
    };
    object.iter().filter(|(_, v)| v.is_array()).map(|(k, _)| k.clone()).collect()
}

fn list_len(value: &Value, list: &str) -> usize {
    value.get(list).and_then(Value::as_array).map_or(0, Vec::len)
}

fn list_mut<'a>(value: &'a mut Value, list: &str) -> Option<&'a mut Vec<Value>> {
    value.get_mut(list).and_then(Value::as_array_mut)
}

/// `plan` without the items `range` of `list`.
fn without(plan: &Plan, list: &str, range: Range<usize>) -> Value {
    let mut value = to_value(plan);
    if let Some(items) = list_mut(&mut value, list) {
        items.drain(range);
    }
    value
}

/// `plan` without client `i` and every item of any other list that names it (its operations,
/// faults on it, partitions it is part of).
fn without_client(plan: &Plan, i: usize) -> Value {
    let name = plan.clients[i].name.clone();
    let tenant = plan.clients[i].tenant.clone();
    // The tenant's last device: what the sections say about the tenant (its room's rekeys) goes.
    let last_of_tenant = plan.clients.iter().filter(|c| c.tenant == tenant).count() == 1;
    let mut value = to_value(plan);
    for list in lists(&value) {
        let Some(items) = list_mut(&mut value, &list) else {
            continue;
        };
        if list == "clients" {
            items.remove(i);
        } else {
            items.retain(|item| !names(item, &name));
        }
    }
    // Sections of the plan hold lists of their own (the store's READ_ONLY windows and key
    // losses, ...): their items that name the client go too; a section that is about the
    // client itself (a swarm drill on it) goes whole.
    if let Value::Object(fields) = &mut value {
        for section in fields.values_mut().filter(|v| v.is_object()) {
            let about_client = names_outside_lists(section, &name);
            if about_client {
                *section = Value::Null;
            } else {
                prune_lists(section, &name);
                if last_of_tenant {
                    prune_lists(section, &tenant);
                }
            }
        }
    }
    value
}

/// Whether a field of `value`, or of an object inside it, is `name` (lists left out: their
/// items are pruned, not the whole section) — a swarm drill's `swarm.device`, say.
fn names_outside_lists(value: &Value, name: &str) -> bool {
    match value {
        Value::String(s) => s == name,
        Value::Object(fields) => fields.values().any(|v| names_outside_lists(v, name)),
        _ => false,
    }
}

/// Removes, from every list inside `value` at any depth, the items that name `name`.
fn prune_lists(value: &mut Value, name: &str) {
    match value {
        Value::Array(items) => {
            items.retain(|item| !names(item, name));
            items.iter_mut().for_each(|item| prune_lists(item, name));
        }
        Value::Object(fields) => fields.values_mut().for_each(|v| prune_lists(v, name)),
        _ => {}
    }
}

/// Whether any string inside `value` is `name`.
fn names(value: &Value, name: &str) -> bool {
    match value {
        Value::String(s) => s == name,
        Value::Array(items) => items.iter().any(|v| names(v, name)),
        Value::Object(fields) => fields.values().any(|v| names(v, name)),
        _ => false,
    }
}

/// The `at_ms` of every item of every list.
fn event_times(value: &Value) -> Vec<u64> {
    lists(value)
        .iter()
        .filter_map(|list| value.get(list).and_then(Value::as_array))
        .flatten()
        .filter_map(|item| item.get("at_ms").and_then(Value::as_u64))
        .collect()
}

/// The plan with every item's `at_ms` and the heal `ms` earlier.
fn shifted(value: &Value, ms: u64) -> Value {
    let mut value = value.clone();
    for list in lists(&value) {
        for item in list_mut(&mut value, &list).into_iter().flatten() {
            if let Some(at) = item.get("at_ms").and_then(Value::as_u64) {
                item["at_ms"] = Value::from(at - ms);
            }
        }
    }
    let heal = value.get("heal_at_ms").and_then(Value::as_u64).unwrap_or(ms);
    with_field(&value, "heal_at_ms", heal.saturating_sub(ms))
}

fn with_field(value: &Value, field: &str, n: u64) -> Value {
    let mut value = value.clone();
    value[field] = Value::from(n);
    value
}

/// Plan fields the knob pass leaves alone: what the run is, and what the time pass shrinks.
const FIXED_FIELDS: [&str; 6] = ["format_version", "seed", "scenario", "profile", "heal_at_ms", "liveness_ms_max"];

/// Paths to every number and flag outside the plan's lists and fixed fields.
fn leaves(value: &Value) -> Vec<Vec<String>> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(fields) => {
                for (k, child) in fields {
                    if path.is_empty() && FIXED_FIELDS.contains(&k.as_str()) {
                        continue;
                    }
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            Value::Number(_) | Value::Bool(_) => out.push(path.clone()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// Simpler values for the leaf at `path`: absent (`null`) or 0 for a number, false for a flag.
fn simpler(value: &Value, path: &[String]) -> Vec<Value> {
    let Some(leaf) = path.iter().try_fold(value, |v, k| v.get(k)) else {
        return Vec::new();
    };
    let options = match leaf {
        Value::Bool(true) => vec![Value::Bool(false)],
        Value::Number(n) if n.as_f64() != Some(0.0) => vec![Value::Null, Value::from(0)],
        _ => Vec::new(),
    };
    options
        .into_iter()
        .map(|option| {
            let mut candidate = value.clone();
            if let Some(slot) = path.iter().try_fold(&mut candidate, |v, k| v.get_mut(k)) {
                *slot = option;
            }
            candidate
        })
        .collect()
}

/// `0..len` in `chunks` contiguous ranges of nearly equal size (the first ones larger).
fn split(len: usize, chunks: usize) -> Vec<Range<usize>> {
    let chunks = chunks.clamp(1, len.max(1));
    let (base, extra) = (len / chunks, len % chunks);
    let mut start = 0;
    (0..chunks)
        .map(|i| {
            let end = start + base + usize::from(i < extra);
            let r = start..end;
            start = end;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64) -> Plan {
        drill_scenarios::plan_for(seed, "sync-basic", drill_scenarios::Profile::Swarm).unwrap()
    }

    /// Fails while the plan keeps client-2's third op and any crash fault; counts runs.
    struct Fake {
        width: usize,
        runs: u64,
        runs_max: u64,
        needle: drill_scenarios::plan::PlannedOp,
    }

    impl Fake {
        fn fails(&self, p: &Plan) -> bool {
            p.ops.contains(&self.needle) && p.faults.iter().any(|f| f.fault.kind() == "crash")
        }
    }

    impl Oracle for Fake {
        fn width(&self) -> usize {
            self.width
        }
        fn still_fails(&mut self, c: &[Plan]) -> Result<Option<Vec<bool>>, CliError> {
            let left = self.runs_max.saturating_sub(self.runs) as usize;
            if left == 0 {
                return Ok(None);
            }
            let take = c.len().min(left);
            self.runs += take as u64;
            Ok(Some(c[..take].iter().map(|p| self.fails(p)).collect()))
        }
    }

    fn seed_with_crash() -> Plan {
        (1..200).map(plan).find(|p| p.faults.iter().any(|f| f.fault.kind() == "crash")).expect("some seed crashes a node at once")
    }

    #[test]
    fn splits_into_near_equal_chunks() {
        assert_eq!(split(5, 2), vec![0..3, 3..5]);
        assert_eq!(split(4, 4), vec![0..1, 1..2, 2..3, 3..4]);
        assert_eq!(split(3, 9), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn shrinks_to_the_one_op_and_one_fault_that_matter() {
        let p = seed_with_crash();
        let crash_node = p.faults.iter().find(|f| f.fault.kind() == "crash").unwrap();
        let node = crash_node.fault.nodes()[0].to_string();
        let needle = p.ops.iter().find(|o| o.client == node).cloned();
        let needle = needle.unwrap_or_else(|| p.ops[0].clone());
        for width in [1, 3] {
            let mut fake = Fake { width, runs: 0, runs_max: 10_000, needle: needle.clone() };
            let out = shrink(p.clone(), &mut fake).unwrap();
            assert_eq!(out.stop, Stop::Fixpoint);
            assert_eq!((out.plan.ops.len(), out.plan.faults.len()), (1, 1));
            assert!(fake.fails(&out.plan));
            assert!(out.plan.validate().is_ok());
        }
    }

    #[test]
    fn stops_when_the_budget_is_spent() {
        let p = seed_with_crash();
        let mut fake = Fake { width: 2, runs: 0, runs_max: 3, needle: p.ops[0].clone() };
        let out = shrink(p, &mut fake).unwrap();
        assert_eq!((out.stop, fake.runs), (Stop::Budget, 3));
    }

    #[test]
    fn dropping_a_client_drops_its_store_faults_and_its_swarm_drill() {
        use drill_scenarios::plan::store::{ReadOnlyWindow, StorePlan};
        let mut p = plan(1);
        let window = |node: &str| ReadOnlyWindow { node: node.into(), at_ms: 10, ms: 10 };
        p.store = Some(StorePlan { read_only: vec![window("client-1"), window("client-2")], ..StorePlan::default() });
        let q = valid_plan(without_client(&p, 0)).expect("still a valid plan");
        assert_eq!(q.store.unwrap().read_only, vec![window("client-2")]);
    }

    #[test]
    fn dropping_a_client_drops_its_passphrase_loss_and_keeps_the_effects_node_faults() {
        use drill_scenarios::plan::store::{PassphraseLoss, StorePlan};
        use drill_scenarios::plan::store_ops::{EffectsCrash, EffectsPartition, OpsPlan};
        let mut p = plan(1);
        let loss = |node: &str| PassphraseLoss { node: node.into(), at_ms: 10, down_ms: 10, aggregates: vec!["note-1".into()] };
        let ops = OpsPlan {
            effects_crash: vec![EffectsCrash { at_ms: 5, down_ms: 10 }],
            effects_partition: vec![EffectsPartition { at_ms: 7, ms: 10 }],
            ..OpsPlan::work(&[2])
        };
        p.store = Some(StorePlan { passphrase_loss: vec![loss("client-1"), loss("client-2")], ops: Some(ops.clone()), ..StorePlan::default() });
        let q = valid_plan(without_client(&p, 0)).expect("still a valid plan");
        let store = q.store.unwrap();
        assert_eq!(store.passphrase_loss, vec![loss("client-2")]);
        assert_eq!(store.ops, Some(ops), "the effects node's faults name no device");
    }

    #[test]
    fn dropping_a_tenants_last_client_drops_its_rooms_rekeys() {
        use drill_scenarios::plan::store::{GroupRekey, StorePlan};
        let mut p = plan(1);
        let rekey = |t: &str| GroupRekey { tenant: t.into(), at_ms: 10, withhold_ms: 10 };
        let (a, b) = (p.clients[0].tenant.clone(), p.clients[1].tenant.clone());
        assert_ne!(a, b, "tenants alternate");
        p.store = Some(StorePlan { group_rekeys: vec![rekey(&a), rekey(&b)], ..StorePlan::default() });
        // Drop the devices of tenant `a` one by one: its rekey goes with the last of them.
        let mut q = p;
        while let Some(i) = q.clients.iter().position(|c| c.tenant == a) {
            let last = q.clients.iter().filter(|c| c.tenant == a).count() == 1;
            q = valid_plan(without_client(&q, i)).expect("still a valid plan");
            let kept = q.store.as_ref().unwrap().group_rekeys.clone();
            assert_eq!(kept, if last { vec![rekey(&b)] } else { vec![rekey(&a), rekey(&b)] });
        }
    }

    #[test]
    fn dropping_a_client_drops_its_ops_and_faults() {
        let p = plan(1);
        let q = valid_plan(without_client(&p, 0)).expect("still a valid plan");
        assert!(q.ops.iter().all(|o| o.client != "client-1"));
        assert!(q.faults.iter().all(|f| !f.fault.nodes().contains(&"client-1")));
    }

    #[test]
    fn knob_candidates_turn_one_setting_off_and_keep_the_identity() {
        let p = (1..100).map(plan).find(|p| p.knobs.net.loss_probability > 0.0).expect("some seed loses messages");
        let v = to_value(&p);
        let paths = leaves(&v);
        assert!(paths.iter().all(|path| !FIXED_FIELDS.contains(&path[0].as_str())));
        let loss = vec!["knobs".to_string(), "net".into(), "loss_probability".into()];
        assert!(paths.contains(&loss));
        let off: Vec<Plan> = simpler(&v, &loss).into_iter().filter_map(valid_plan).collect();
        assert!(off.iter().any(|q| q.knobs.net.loss_probability == 0.0 && q.seed == p.seed));
    }

    #[test]
    fn time_passes_keep_plans_valid() {
        let p = plan(2);
        let v = to_value(&p);
        let first = event_times(&v).into_iter().min().unwrap();
        let q = valid_plan(shifted(&v, first)).expect("valid");
        assert_eq!(q.heal_at_ms, p.heal_at_ms - first);
        assert_eq!(event_times(&to_value(&q)).into_iter().min(), Some(0));
    }
}
