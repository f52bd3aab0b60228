//! Reusable model check: the contract's limit properties, for any backend.
//!
//! [`check_trace`] drives a limiter through a sorted list of arrival times and
//! compares its decisions with a sliding log of the limiter's own admitted
//! history, which is slow but obviously right. A backend plugs in as a closure
//! `FnMut(t_ms, &[LimitSpec]) -> Decision` that sets its clock to `t_ms` and
//! checks one request of a single key. The proptest generators live in
//! `strategy` (test builds only, as proptest is a dev-dependency).

use super::{retry_after_secs, Decision, LimitSpec};

/// How many requests a checked trace admitted and refused, so callers can
/// tell a trace that exercised refusals from one that did not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceSummary {
    /// Requests admitted.
    pub admitted: usize,
    /// Requests refused.
    pub refused: usize,
}

/// A refusal seen in the trace.
struct Refusal {
    t_ms: u64,
    /// How many requests had been admitted before it.
    admitted_before: usize,
    retry_after_secs: u64,
}

/// Runs `arrivals_ms` (sorted) through a limiter made by `fresh` and checks:
/// 1. never over-admits: every `[a, a + W)` holds at most `max` admitted, per limit;
/// 2. refuses early by at most W/60: at each refusal at `t`, some limit has at
///    least `max` admitted in `(t - W - W/60, t]`;
/// 3. truthful Retry-After: a fresh limiter that replays the admitted history
///    (and must admit all of it: refusals charged nothing) admits a retry at
///    `t + 1000 × retry_after_secs`.
///
/// Also checks the shape of each decision. Returns the first violation found.
pub fn check_trace<L, F>(
    specs: &[LimitSpec],
    arrivals_ms: &[u64],
    mut fresh: F,
) -> Result<TraceSummary, String>
where
    F: FnMut() -> L,
    L: FnMut(u64, &[LimitSpec]) -> Decision,
{
    if arrivals_ms.windows(2).any(|w| w[0] > w[1]) {
        return Err("arrivals must be sorted".into());
    }
    let mut limiter = fresh();
    let mut admitted = Vec::new();
    let mut refusals = Vec::new();
    for &t_ms in arrivals_ms {
        let decision = limiter(t_ms, specs);
        check_shape(specs, &decision).map_err(|e| format!("at {t_ms} ms: {e}"))?;
        match decision {
            Decision::Admitted { .. } => admitted.push(t_ms),
            Decision::Refused { retry_after_ms, .. } => refusals.push(Refusal {
                t_ms,
                admitted_before: admitted.len(),
                retry_after_secs: retry_after_secs(retry_after_ms),
            }),
        }
    }
    never_over_admits(specs, &admitted)?;
    refuses_early_at_most_one_bucket(specs, &admitted, &refusals)?;
    retry_after_is_truthful(specs, &admitted, &refusals, &mut fresh)?;
    Ok(TraceSummary {
        admitted: admitted.len(),
        refused: refusals.len(),
    })
}

/// Builds sorted arrival times from a start and the gaps between arrivals.
pub fn arrivals_from_gaps(start_ms: u64, gaps_ms: &[u64]) -> Vec<u64> {
    gaps_ms
        .iter()
        .scan(start_ms, |t_ms, gap_ms| {
            *t_ms += gap_ms;
            Some(*t_ms)
        })
        .collect()
}

fn check_shape(specs: &[LimitSpec], decision: &Decision) -> Result<(), String> {
    let statuses = decision.statuses();
    if statuses.len() != specs.len() {
        return Err(format!(
            "{} statuses for {} specs",
            statuses.len(),
            specs.len()
        ));
    }
    if let Decision::Refused {
        limit_index,
        retry_after_ms,
        ..
    } = decision
    {
        let longest = statuses.iter().map(|s| s.wait_ms).max().unwrap_or(0);
        let reported = statuses.get(*limit_index).map(|s| s.wait_ms);
        if *retry_after_ms == 0 || *retry_after_ms != longest || reported != Some(longest) {
            return Err(format!("bad refusal {decision:?}"));
        }
    }
    let inconsistent = statuses
        .iter()
        .any(|s| (s.remaining > 0) == (s.wait_ms > 0));
    if inconsistent {
        return Err(format!("remaining and wait disagree: {decision:?}"));
    }
    Ok(())
}

/// Admitted times in `(after_ms, upto_ms]`, from a sorted log.
fn admitted_in(log: &[u64], after_ms: i128, upto_ms: u64) -> usize {
    let start = log.partition_point(|&t| i128::from(t) <= after_ms);
    let end = log.partition_point(|&t| t <= upto_ms);
    end.saturating_sub(start)
}

fn never_over_admits(specs: &[LimitSpec], admitted: &[u64]) -> Result<(), String> {
    for spec in specs {
        for (i, &a) in admitted.iter().enumerate() {
            // The fullest intervals [a, a + W) start at an admission.
            let in_window = admitted.partition_point(|&t| t < a + spec.window_ms) - i;
            if in_window > spec.max as usize {
                return Err(format!(
                    "over-admitted {}: {in_window} in [{a}, {a} + {})",
                    spec.name, spec.window_ms
                ));
            }
        }
    }
    Ok(())
}

fn refuses_early_at_most_one_bucket(
    specs: &[LimitSpec],
    admitted: &[u64],
    refusals: &[Refusal],
) -> Result<(), String> {
    for r in refusals {
        let log = &admitted[..r.admitted_before];
        let justified = specs.iter().any(|spec| {
            let span_ms = spec.window_ms + spec.window_ms / 60;
            let after_ms = i128::from(r.t_ms) - i128::from(span_ms);
            admitted_in(log, after_ms, r.t_ms) >= spec.max as usize
        });
        if !justified {
            return Err(format!("refused too early at {} ms", r.t_ms));
        }
    }
    Ok(())
}

fn retry_after_is_truthful<L, F>(
    specs: &[LimitSpec],
    admitted: &[u64],
    refusals: &[Refusal],
    fresh: &mut F,
) -> Result<(), String>
where
    F: FnMut() -> L,
    L: FnMut(u64, &[LimitSpec]) -> Decision,
{
    let mut last_checked = None;
    for r in refusals {
        let retry_ms = r.t_ms + 1_000 * r.retry_after_secs;
        // Refusals with the same history and retry time are the same check.
        if last_checked.replace((r.admitted_before, retry_ms))
            == Some((r.admitted_before, retry_ms))
        {
            continue;
        }
        let mut replay = fresh();
        for &t_ms in &admitted[..r.admitted_before] {
            if !replay(t_ms, specs).is_admitted() {
                return Err(format!("replay refused {t_ms} ms: a refusal was charged"));
            }
        }
        let retry = replay(retry_ms, specs);
        if !retry.is_admitted() {
            return Err(format!(
                "refused at {} ms with Retry-After {} s, retry at {retry_ms} ms refused: {retry:?}",
                r.t_ms, r.retry_after_secs
            ));
        }
    }
    Ok(())
}

/// Proptest generators for [`check_trace`] (test builds only).
#[cfg(test)]
pub(crate) mod strategy {
    use proptest::prelude::*;

    use super::{arrivals_from_gaps, LimitSpec};

    const WINDOWS_MS: [u64; 6] = [1_000, 2_000, 3_000, 10_000, 60_000, 3_600_000];

    /// Sorted arrivals: mostly bursts, some pauses of seconds, minutes, and
    /// rarely an hour, so that every window in `specs` fills and drains.
    pub(crate) fn arrivals(max_len: usize) -> impl Strategy<Value = Vec<u64>> {
        let gap_ms = prop_oneof![
            6 => 0..30u64,
            4 => 0..1_500u64,
            2 => 0..90_000u64,
            1 => 0..4_000_000u64,
        ];
        (0..10_000_000u64, prop::collection::vec(gap_ms, 1..max_len))
            .prop_map(|(start_ms, gaps_ms)| arrivals_from_gaps(start_ms, &gaps_ms))
    }

    /// One to four limits with small `max`, so that refusals are common.
    pub(crate) fn specs() -> impl Strategy<Value = Vec<LimitSpec>> {
        let one = (1..8u32, prop::sample::select(WINDOWS_MS.to_vec()));
        prop::collection::vec(one, 1..5).prop_map(|limits| {
            limits
                .into_iter()
                .enumerate()
                .map(|(i, (max, window_ms))| LimitSpec::new(&format!("l{i}"), max, window_ms))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::limiter::{FakeClock, MemoryLimiter};

    /// A fresh in-memory limiter for one key, driven by a fake clock.
    fn memory_backend() -> impl FnMut(u64, &[LimitSpec]) -> Decision {
        let limiter = MemoryLimiter::new(FakeClock::new(0));
        move |t_ms, specs| {
            limiter.clock().set_ms(t_ms);
            limiter.check_and_charge("key", specs)
        }
    }

    fn plan(limits: &[(u32, u64)]) -> Vec<LimitSpec> {
        limits
            .iter()
            .enumerate()
            .map(|(i, &(max, window_ms))| LimitSpec::new(&format!("l{i}"), max, window_ms))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn memory_matches_model_random_specs(
            specs in strategy::specs(),
            arrivals in strategy::arrivals(150),
        ) {
            let result = check_trace(&specs, &arrivals, memory_backend);
            prop_assert!(result.is_ok(), "{:?}", result);
        }

        #[test]
        fn memory_matches_model_second_minute_hour(arrivals in strategy::arrivals(200)) {
            let specs = plan(&[(3, 1_000), (5, 60_000), (12, 3_600_000)]);
            let result = check_trace(&specs, &arrivals, memory_backend);
            prop_assert!(result.is_ok(), "{:?}", result);
        }
    }

    #[test]
    fn model_catches_a_fixed_window() {
        // A fixed window over-admits across a boundary: the check must see it.
        let fixed_window = || {
            let mut window_start_ms = 0;
            let mut count = 0;
            move |t_ms: u64, specs: &[LimitSpec]| {
                let spec = &specs[0];
                if t_ms / spec.window_ms != window_start_ms {
                    (window_start_ms, count) = (t_ms / spec.window_ms, 0);
                }
                let statuses = smallvec::smallvec![crate::limiter::LimitStatus {
                    remaining: 1,
                    wait_ms: 0,
                }];
                if count < spec.max {
                    count += 1;
                    return Decision::Admitted { statuses };
                }
                Decision::Refused {
                    limit_index: 0,
                    retry_after_ms: 1,
                    statuses,
                }
            }
        };
        let specs = plan(&[(2, 1_000)]);
        let result = check_trace(&specs, &[998, 999, 1_000, 1_001], fixed_window);
        assert!(result.is_err_and(|e| e.contains("over-admitted")));
    }

    #[test]
    fn traces_exercise_refusals() {
        let specs = plan(&[(3, 1_000), (5, 60_000)]);
        let arrivals = arrivals_from_gaps(5, &[0, 1, 2, 300, 400, 700, 10, 20_000, 5, 5, 5]);
        let summary = check_trace(&specs, &arrivals, memory_backend);
        assert_eq!(
            summary,
            Ok(TraceSummary {
                admitted: 5,
                refused: 6
            })
        );
    }
}
