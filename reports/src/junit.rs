//! A gate's `junit.xml`: one test case per drill, per failing seed, per nondeterministic seed
//! and per invariant, so that CI systems show what failed without reading drill's own files.
//! A sweep's (a sweep viewed as a gate, [`GateSummary::of_sweep`]) has the `seeds` suite only.

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::gate::{DrillVerdict, GateSummary};

/// Renders the gate's (or sweep's) JUnit XML (quick-junit escapes every name and message).
pub fn render_junit(g: &GateSummary) -> String {
    let mut report = Report::new(format!("drill {}", g.what()));
    report.add_test_suite(seeds_suite(g));
    if !g.is_sweep() {
        report.add_test_suite(drills_suite(g));
        report.add_test_suite(determinism_suite(g));
        report.add_test_suite(coverage_suite(g));
    }
    report.to_string().unwrap_or_else(|e| format!("<!-- cannot render junit.xml: {e} -->\n"))
}

fn failure(message: &str, description: &str) -> TestCaseStatus {
    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
    status.set_message(message).set_description(description);
    status
}

fn seeds_suite(g: &GateSummary) -> TestSuite {
    let mut suite = TestSuite::new("seeds");
    let s = &g.sweep;
    let name = format!("{} {} seeds {}", s.scenario, s.profile, s.seeds);
    let passed = format!("{} of {} seeds passed", s.counts.pass, s.counts.total());
    let mut case = TestCase::new(name, TestCaseStatus::success());
    case.set_classname("drill.sweep").set_system_out(passed);
    suite.add_test_case(case);
    for (scenario, f) in g.failing() {
        let why = f.first_violation.as_ref().map_or(String::new(), |v| format!("{} at {} (trace line {}): {}", v.invariant, v.node, v.trace_line, v.message));
        let description = format!("{why}\nreplay: {}\nfolder: {}", f.replay, f.folder);
        let message = format!("{} {}", f.outcome, f.first_violation.as_ref().map_or("", |v| v.invariant.as_str()));
        let mut case = TestCase::new(format!("{scenario} seed {}", f.seed), failure(message.trim(), &description));
        case.set_classname(format!("drill.seed.{scenario}"));
        suite.add_test_case(case);
    }
    suite
}

fn drills_suite(g: &GateSummary) -> TestSuite {
    let mut suite = TestSuite::new("drills");
    for d in &g.drills {
        let status = match d.verdict(g.drill_seeds_min) {
            DrillVerdict::Passed => TestCaseStatus::success(),
            DrillVerdict::Failed => {
                let msg = format!("{} of {} runs failed", d.counts.failing(), d.counts.total());
                let replays: Vec<&str> = d.failing.iter().map(|f| f.replay.as_str()).collect();
                failure(&msg, &replays.join("\n"))
            }
            DrillVerdict::Short => {
                let why = format!("exercised and passed on {} of {} runs; the gate needs {}", d.passed_runs, d.counts.total(), g.drill_seeds_min);
                failure("not exercised enough", &why)
            }
        };
        let mut case = TestCase::new(format!("{} ({})", d.name, d.profile), status);
        case.set_classname("drill.drill");
        suite.add_test_case(case);
    }
    suite
}

fn determinism_suite(g: &GateSummary) -> TestSuite {
    let mut suite = TestSuite::new("determinism");
    let checked = format!("{} seeds run twice", g.determinism.checked);
    let mut case = TestCase::new("sample", TestCaseStatus::success());
    case.set_classname("drill.determinism").set_system_out(checked);
    suite.add_test_case(case);
    for m in &g.determinism.mismatches {
        let description = format!("{}\nfolder: {}\nreplay: {}", m.first_difference, m.folder, m.replay);
        let mut case = TestCase::new(format!("{} seed {}", m.scenario, m.seed), failure("the two runs differ", &description));
        case.set_classname("drill.determinism");
        suite.add_test_case(case);
    }
    suite
}

fn coverage_suite(g: &GateSummary) -> TestSuite {
    let mut suite = TestSuite::new("coverage");
    for i in &g.invariants {
        let status = if i.checks > 0 || !g.coverage_judged {
            TestCaseStatus::success()
        } else {
            failure("never checked non-vacuously", "no run of the gate had anything to check")
        };
        let mut case = TestCase::new(i.id.clone(), status);
        case.set_classname("drill.invariant").set_system_out(format!("{} checks", i.checks));
        suite.add_test_case(case);
    }
    if g.unrun > 0 && g.coverage_judged {
        let msg = format!("{} runs not started", g.unrun);
        let mut case = TestCase::new("time budget", failure(&msg, "the time budget ran out"));
        case.set_classname("drill.budget");
        suite.add_test_case(case);
    }
    suite
}
