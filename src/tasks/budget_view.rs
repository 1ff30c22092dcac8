//! A task's budget as its event log records it (the Trae status shows it).

use agentd_engine::{
    agent::{Budget, budget_tokens},
    messages::Usage,
};

use super::{EventKind, views::Event};

/// A task's budget, from its log: the limits its `start` event recorded and
/// what its last `usage` event had counted (tokens, USD).
pub fn budget_spent(log: &[Event]) -> Option<(Budget, (f64, f64))> {
    let start = log.iter().find(|e| e.kind == EventKind::Start.as_str())?;
    let data = start.body.get("data")?;
    let limits: Budget = serde_json::from_value(data.get("budget")?.clone()).ok()?;
    let provider = data.get("provider").and_then(|p| p.as_str()).unwrap_or("");
    let usage = log
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::Usage.as_str())
        .and_then(|e| e.body.get("data"));
    let spent = match usage {
        None => (0.0, 0.0),
        Some(d) => {
            let total: Usage = d
                .get("total")
                .and_then(|t| serde_json::from_value(t.clone()).ok())
                .unwrap_or_default();
            let cost = d
                .get("total_cost_usd")
                .and_then(|c| c.as_f64())
                .unwrap_or(0.0);
            (budget_tokens(provider, &total) as f64, cost)
        }
    };
    Some((limits, spent))
}
