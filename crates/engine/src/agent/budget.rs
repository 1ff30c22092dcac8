//! Per-task budgets (none of Trae's peers has them): tokens, estimated cost
//! and wall time. Checked before each model call against what the run has
//! recorded, so a run stops before it spends past a limit rather than after.
//!
//! "Would exceed" is judged with what the next call costs at least: it
//! sends the whole conversation again, so at least the previous call's
//! input tokens (and their price). A limit that is already reached, or that
//! the next call would certainly pass, stops the run.

use serde::{Deserialize, Serialize};

use crate::llm;
use crate::messages::Usage;

/// A task's limits; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Input plus output tokens over every model call of the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_total: Option<u64>,
    /// Estimated cost in US dollars (see `llm::estimate_cost_usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// Seconds since the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wall_secs: Option<f64>,
}

impl Budget {
    /// Each limit this budget leaves unset taken from `fallback`.
    pub fn or(self, fallback: Budget) -> Budget {
        Budget {
            max_tokens_total: self.max_tokens_total.or(fallback.max_tokens_total),
            max_cost_usd: self.max_cost_usd.or(fallback.max_cost_usd),
            max_wall_secs: self.max_wall_secs.or(fallback.max_wall_secs),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        *self == Budget::default()
    }

    /// Limits must be positive (and finite): a zero budget is a mistake.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: Option<f64>| match v {
            Some(v) if !(v > 0.0 && v.is_finite()) => {
                Err(format!("{name} must be a positive number, not {v}"))
            }
            _ => Ok(()),
        };
        positive("max_tokens_total", self.max_tokens_total.map(|t| t as f64))?;
        positive("max_cost_usd", self.max_cost_usd)?;
        positive("max_wall_secs", self.max_wall_secs)
    }
}

/// Which limit a run reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BudgetLimit {
    #[serde(rename = "max_tokens_total")]
    TokensTotal,
    #[serde(rename = "max_cost_usd")]
    CostUsd,
    #[serde(rename = "max_wall_secs")]
    WallSecs,
}

impl BudgetLimit {
    pub fn as_str(&self) -> &'static str {
        match self {
            BudgetLimit::TokensTotal => "max_tokens_total",
            BudgetLimit::CostUsd => "max_cost_usd",
            BudgetLimit::WallSecs => "max_wall_secs",
        }
    }
}

/// Why a run was stopped before a model call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetExceeded {
    pub budget: BudgetLimit,
    /// The limit.
    pub limit: f64,
    /// What the run had spent when it stopped (tokens, USD or seconds).
    pub spent: f64,
    /// The least the next call would have added (0 for wall time).
    pub next_call_at_least: f64,
}

impl BudgetExceeded {
    /// The run's error.
    pub fn message(&self) -> String {
        let (spent, limit, next) = match self.budget {
            BudgetLimit::TokensTotal => (
                format!("{} tokens", self.spent),
                format!("{} tokens", self.limit),
                format!("at least {} more", self.next_call_at_least),
            ),
            BudgetLimit::CostUsd => (
                format!("${:.4}", self.spent),
                format!("${:.4}", self.limit),
                format!("at least ${:.4} more", self.next_call_at_least),
            ),
            BudgetLimit::WallSecs => (
                format!("{:.1} s", self.spent),
                format!("{} s", self.limit),
                String::new(),
            ),
        };
        let reached = self.spent >= self.limit;
        match (reached, self.budget) {
            (true, _) | (false, BudgetLimit::WallSecs) => format!(
                "Budget exceeded: {} is {limit} and the task has spent {spent}; stopped before the next model call.",
                self.budget.as_str()
            ),
            (false, _) => format!(
                "Budget exceeded: {} is {limit}, the task has spent {spent} and the next model call would need \
                 {next}; stopped before making it.",
                self.budget.as_str()
            ),
        }
    }
}

/// What a run has spent, and what its next model call costs at least.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spent {
    pub(crate) tokens: u64,
    pub(crate) cost_usd: f64,
    pub(crate) wall_secs: f64,
    pub(crate) next_tokens: u64,
    pub(crate) next_cost_usd: f64,
}

/// The limit a run would pass with its next model call, if any.
pub(crate) fn check(budget: &Budget, spent: &Spent) -> Option<BudgetExceeded> {
    if let Some(limit) = budget.max_tokens_total
        && (spent.tokens >= limit || spent.tokens + spent.next_tokens > limit)
    {
        return Some(BudgetExceeded {
            budget: BudgetLimit::TokensTotal,
            limit: limit as f64,
            spent: spent.tokens as f64,
            next_call_at_least: spent.next_tokens as f64,
        });
    }
    if let Some(limit) = budget.max_cost_usd
        && (spent.cost_usd >= limit || spent.cost_usd + spent.next_cost_usd > limit)
    {
        return Some(BudgetExceeded {
            budget: BudgetLimit::CostUsd,
            limit,
            spent: spent.cost_usd,
            next_call_at_least: spent.next_cost_usd,
        });
    }
    match budget.max_wall_secs {
        Some(limit) if spent.wall_secs >= limit => Some(BudgetExceeded {
            budget: BudgetLimit::WallSecs,
            limit,
            spent: spent.wall_secs,
            next_call_at_least: 0.0,
        }),
        _ => None,
    }
}

/// The tokens a call counts toward `max_tokens_total`: input and output.
/// Anthropic reports cache reads and writes apart from `input_tokens`; the
/// other providers count them inside it.
pub fn call_tokens(provider: &str, usage: &Usage) -> u64 {
    let cached = match provider.eq_ignore_ascii_case("anthropic") {
        true => usage.cache_creation_input_tokens + usage.cache_read_input_tokens,
        false => 0,
    };
    usage.input_tokens + cached + usage.output_tokens
}

/// The least the next call costs: the previous call's input again.
pub(crate) fn next_call_floor(provider: &str, model: &str, last: &Usage) -> (u64, f64) {
    let input = Usage {
        output_tokens: 0,
        reasoning_tokens: 0,
        ..*last
    };
    (
        call_tokens(provider, &input),
        llm::estimate_cost_usd(provider, model, &input),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(tokens: u64, next_tokens: u64) -> Spent {
        Spent {
            tokens,
            next_tokens,
            ..Spent::default()
        }
    }

    #[test]
    fn a_limit_reached_or_certain_to_be_passed_stops_the_run() {
        let budget = Budget {
            max_tokens_total: Some(45),
            ..Budget::default()
        };
        assert_eq!(check(&budget, &spent(30, 10)), None);
        let reached = check(&budget, &spent(45, 10)).unwrap();
        assert_eq!(
            (reached.budget, reached.limit, reached.spent),
            (BudgetLimit::TokensTotal, 45.0, 45.0)
        );
        assert!(reached.message().starts_with(
            "Budget exceeded: max_tokens_total is 45 tokens and the task has spent 45 tokens"
        ));
        let ahead = check(&budget, &spent(40, 10)).unwrap();
        assert!(
            ahead.message().contains("would need at least 10 more"),
            "{}",
            ahead.message()
        );

        let wall = Budget {
            max_wall_secs: Some(2.0),
            ..Budget::default()
        };
        let over = Spent {
            wall_secs: 2.5,
            ..Spent::default()
        };
        assert_eq!(check(&wall, &over).unwrap().budget, BudgetLimit::WallSecs);
        assert_eq!(check(&Budget::default(), &over), None);
        let cost = Budget {
            max_cost_usd: Some(0.01),
            ..Budget::default()
        };
        let dear = Spent {
            cost_usd: 0.009,
            next_cost_usd: 0.002,
            ..Spent::default()
        };
        assert_eq!(check(&cost, &dear).unwrap().budget, BudgetLimit::CostUsd);
    }

    #[test]
    fn budgets_merge_per_limit_and_refuse_nonsense() {
        let request = Budget {
            max_tokens_total: Some(100),
            ..Budget::default()
        };
        let config = Budget {
            max_tokens_total: Some(5),
            max_cost_usd: Some(1.0),
            ..Budget::default()
        };
        assert_eq!(
            request.or(config),
            Budget {
                max_tokens_total: Some(100),
                max_cost_usd: Some(1.0),
                max_wall_secs: None
            }
        );
        assert!(Budget::default().is_unlimited());
        assert!(
            Budget {
                max_cost_usd: Some(0.0),
                ..Budget::default()
            }
            .validate()
            .is_err()
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn anthropic_cache_tokens_count() {
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_input_tokens: 100,
            ..Usage::default()
        };
        assert_eq!(call_tokens("anthropic", &usage), 115);
        assert_eq!(call_tokens("openai", &usage), 15);
        assert_eq!(next_call_floor("anthropic", "x", &usage).0, 110);
    }
}
