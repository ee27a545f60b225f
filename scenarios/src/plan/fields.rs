//! What a plan file may hold beyond what its types say: only fields the plan knows, at every
//! level, and only numbers a run can add and multiply without overflow. Both checks work on the
//! plan as JSON, so that a section added to the plan is covered without a line here.

use serde_json::Value;

use super::Plan;

/// The largest magnitude any number of a plan may have (2^40, about 35 years in milliseconds),
/// unless the field's own range is tighter; the seed alone may be any u64. It keeps every sum
/// and product the world makes of plan values (times in microseconds, windows added to the
/// clock) far from overflow, so no plan can panic the world.
pub const PLAN_NUMBER_MAX: u64 = 1 << 40;

/// What a suspect field is set to when probing it: a string no number, list, flag or section of
/// a plan accepts.
const PROBE: &str = "drill: is this field known?";

/// Refuses the first field of `input` (a plan file's JSON) that `plan`, what `input` reads as,
/// does not know. A field the plan writes back is known; one it does not write back is unknown,
/// unless it holds null, false or [] (a known field at its default, which the plan leaves out
/// when it writes itself): such a field is unknown when the plan still reads the same with the
/// field set to [`PROBE`], which every known field would refuse or keep.
pub fn refuse_unknown(input: &Value, plan: &Plan) -> Result<(), String> {
    let known = serde_json::to_value(plan).map_err(|e| e.to_string())?;
    let mut suspects = Vec::new();
    if let Some(path) = unknown_field(input, &known, &Location::default(), &mut suspects) {
        return Err(format!("unknown field `{path}`"));
    }
    for at in suspects {
        let mut probe = input.clone();
        *probe.pointer_mut(&at.pointer).expect("a suspect is a field of the input") = Value::String(PROBE.to_string());
        if serde_json::from_value::<Plan>(probe).is_ok_and(|p| &p == plan) {
            return Err(format!("unknown field `{}`", at.path));
        }
    }
    Ok(())
}

/// Refuses the first number of `plan` whose magnitude is above [`PLAN_NUMBER_MAX`] (the
/// top-level seed excepted), by its path.
pub fn check_numbers(plan: &Plan) -> Result<(), String> {
    let value = serde_json::to_value(plan).map_err(|e| e.to_string())?;
    match number_out_of_range(&value, &Location::default()) {
        Some((path, n)) => Err(format!("field `{path}` is {n}, outside the range -{PLAN_NUMBER_MAX}..={PLAN_NUMBER_MAX} of every plan number")),
        None => Ok(()),
    }
}

/// Where a value sits in a plan: its path as messages show it (`knobs.net.loss_probability`,
/// `ops[0].client`) and as a JSON pointer.
#[derive(Debug, Clone, Default)]
struct Location {
    path: String,
    pointer: String,
}

impl Location {
    fn is_root(&self) -> bool {
        self.pointer.is_empty()
    }

    fn field(&self, key: &str) -> Location {
        let path = if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) };
        Location { path, pointer: format!("{}/{}", self.pointer, key.replace('~', "~0").replace('/', "~1")) }
    }

    fn element(&self, i: usize) -> Location {
        Location { path: format!("{}[{i}]", self.path), pointer: format!("{}/{i}", self.pointer) }
    }
}

/// The path of the first field of `input` that `known` does not have; the fields it leaves
/// out that hold a default are pushed on `suspects` instead.
fn unknown_field(input: &Value, known: &Value, here: &Location, suspects: &mut Vec<Location>) -> Option<String> {
    match (input, known) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| {
            let at = here.field(k);
            match b.get(k) {
                Some(w) => unknown_field(v, w, &at, suspects),
                None if matches!(v, Value::Null | Value::Bool(false)) || v.as_array().is_some_and(Vec::is_empty) => {
                    suspects.push(at);
                    None
                }
                None => Some(at.path),
            }
        }),
        (Value::Array(a), Value::Array(b)) => a.iter().zip(b).enumerate().find_map(|(i, (v, w))| unknown_field(v, w, &here.element(i), suspects)),
        _ => None,
    }
}

fn number_out_of_range(value: &Value, here: &Location) -> Option<(String, String)> {
    match value {
        Value::Number(n) => {
            let ok = match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => u <= PLAN_NUMBER_MAX,
                (None, Some(i), _) => i.unsigned_abs() <= PLAN_NUMBER_MAX,
                (None, None, Some(f)) => f.is_finite() && f.abs() <= PLAN_NUMBER_MAX as f64,
                (None, None, None) => false,
            };
            (!ok).then(|| (here.path.clone(), n.to_string()))
        }
        Value::Object(o) => o.iter().filter(|(k, _)| !(here.is_root() && k.as_str() == "seed")).find_map(|(k, v)| number_out_of_range(v, &here.field(k))),
        Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| number_out_of_range(v, &here.element(i))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Profile;
    use super::*;

    fn swarm(seed: u64) -> Plan {
        crate::plan_for(seed, "sync-basic", Profile::Swarm).unwrap()
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        let good = serde_json::to_value(swarm(1)).unwrap();
        let mut top = good.clone();
        top["bogus"] = 1.into();
        let mut nested = good.clone();
        nested["knobs"]["net"]["bogus"] = 1.into();
        let mut in_list = good.clone();
        in_list["ops"][0]["bogus"] = "x".into();
        // Unknown fields holding what a known field at its default would hold.
        let mut null = good.clone();
        null["knobs"]["disk"]["bogus"] = Value::Null;
        let mut empty = good.clone();
        empty["transport_knobs"]["bogus/~"] = serde_json::json!([]);
        let mut no = good.clone();
        no["ops"][1]["bogus"] = false.into();
        let cases = [
            (top, "bogus"),
            (nested, "knobs.net.bogus"),
            (in_list, "ops[0].bogus"),
            (null, "knobs.disk.bogus"),
            (empty, "transport_knobs.bogus/~"),
            (no, "ops[1].bogus"),
        ];
        for (plan, path) in cases {
            let err = Plan::parse(&plan.to_string()).unwrap_err();
            assert!(err.starts_with(&format!("unknown field `{path}`")), "{path}: {err}");
        }
        assert!(Plan::parse(&good.to_string()).is_ok());
    }

    #[test]
    fn known_fields_left_at_their_default_are_accepted() {
        let good = crate::plan_for(1, "sync-basic", Profile::None).unwrap();
        let mut plan = serde_json::to_value(&good).unwrap();
        let absent: Vec<&str> = ["store", "blobs", "jobs", "drill"].into_iter().filter(|s| plan.get(s).is_none()).collect();
        assert!(!absent.is_empty(), "the plan leaves no section out");
        for section in absent {
            plan[section] = Value::Null;
        }
        assert_eq!(Plan::parse(&plan.to_string()), Ok(good));
    }

    #[test]
    fn profiles_and_numbers_are_checked() {
        // An unknown profile is refused as the file is read (the profile is an enum).
        for profile in ["heavy", "", "server"] {
            let mut plan = serde_json::to_value(swarm(1)).unwrap();
            plan["profile"] = profile.into();
            let err = Plan::parse(&plan.to_string()).unwrap_err();
            assert!(err.contains("unknown variant") && err.contains("none, lite, swarm") || err.contains("`none`, `lite`, `swarm`"), "{profile}: {err}");
        }
        let mut p = swarm(1);
        p.server_retention = Some(u64::MAX);
        assert!(p.validate().unwrap_err().contains("field `server_retention` is 18446744073709551615"));
        let mut p = swarm(1);
        p.ops[0].at_ms = PLAN_NUMBER_MAX + 1;
        assert!(p.validate().unwrap_err().contains("field `ops[0].at_ms` is 1099511627777"));
        let mut p = swarm(1);
        p.seed = u64::MAX;
        assert!(p.validate().is_ok());
    }

    #[test]
    fn every_plan_a_seed_or_drill_builds_keeps_the_number_range() {
        for seed in 0..300 {
            for profile in Profile::ALL {
                let p = crate::plan_for(seed, "sync-basic", profile).unwrap();
                p.validate().unwrap_or_else(|e| panic!("seed {seed} {profile}: {e}"));
            }
        }
        for d in crate::drills::registry() {
            for seed in 0..5 {
                let p = crate::plan_for(seed, d.id, Profile::Swarm).unwrap();
                p.validate().unwrap_or_else(|e| panic!("{} seed {seed}: {e}", d.id));
            }
        }
    }
}
