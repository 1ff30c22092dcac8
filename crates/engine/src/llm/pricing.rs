//! Rough cost of a call in USD, from public list prices (USD per 1M tokens).
//! Unknown models (custom deployments, local models) cost 0: an estimate
//! for dashboards, not billing.

use crate::messages::Usage;

/// (model prefix, input, cached input, output). Longest matching prefix wins,
/// so dated and suffixed names (`claude-sonnet-4-20250514`) match.
const PRICES: &[(&str, f64, f64, f64)] = &[
    // OpenAI
    ("gpt-4o", 2.50, 1.25, 10.00),
    ("gpt-4o-mini", 0.15, 0.075, 0.60),
    ("gpt-4.1", 2.00, 0.50, 8.00),
    ("gpt-4.1-mini", 0.40, 0.10, 1.60),
    ("gpt-4.1-nano", 0.10, 0.025, 0.40),
    ("gpt-5", 1.25, 0.125, 10.00),
    ("gpt-5-mini", 0.25, 0.025, 2.00),
    ("gpt-5-nano", 0.05, 0.005, 0.40),
    ("o1", 15.00, 7.50, 60.00),
    ("o1-mini", 1.10, 0.55, 4.40),
    ("o3", 2.00, 0.50, 8.00),
    ("o3-mini", 1.10, 0.55, 4.40),
    ("o4-mini", 1.10, 0.275, 4.40),
    // Anthropic (cache reads 0.1x input; cache writes priced at 1.25x below)
    ("claude-opus-4", 15.00, 1.50, 75.00),
    ("claude-opus-4-5", 5.00, 0.50, 25.00),
    ("claude-sonnet-4", 3.00, 0.30, 15.00),
    ("claude-3-7-sonnet", 3.00, 0.30, 15.00),
    ("claude-3-5-sonnet", 3.00, 0.30, 15.00),
    ("claude-haiku-4-5", 1.00, 0.10, 5.00),
    ("claude-3-5-haiku", 0.80, 0.08, 4.00),
    ("claude-3-haiku", 0.25, 0.03, 1.25),
    // Google (prompts up to 200k tokens)
    ("gemini-2.5-pro", 1.25, 0.125, 10.00),
    ("gemini-2.5-flash", 0.30, 0.03, 2.50),
    ("gemini-2.5-flash-lite", 0.10, 0.01, 0.40),
    ("gemini-2.0-flash", 0.10, 0.025, 0.40),
];

/// Anthropic bills cache writes at 1.25x the input price.
const CACHE_WRITE_FACTOR: f64 = 1.25;

/// Estimated cost of `usage` for `model` at `provider`, in USD; 0 if unknown.
pub fn estimate_cost_usd(provider: &str, model: &str, usage: &Usage) -> f64 {
    if provider.eq_ignore_ascii_case("ollama") {
        return 0.0; // local
    }
    let Some((input, cached, output)) = price(model) else {
        return 0.0;
    };
    // Anthropic reports cached tokens apart from input_tokens; the others
    // (OpenAI-compatible, Gemini) count them inside input_tokens.
    let uncached = if provider.eq_ignore_ascii_case("anthropic") {
        usage.input_tokens
    } else {
        usage
            .input_tokens
            .saturating_sub(usage.cache_read_input_tokens)
    };
    let per_token = |tokens: u64, price: f64| tokens as f64 * price / 1_000_000.0;
    per_token(uncached, input)
        + per_token(usage.cache_read_input_tokens, cached)
        + per_token(
            usage.cache_creation_input_tokens,
            input * CACHE_WRITE_FACTOR,
        )
        + per_token(usage.output_tokens, output)
}

/// Prices of a model, ignoring a gateway prefix (`anthropic/claude-…`, `models/gemini-…`).
fn price(model: &str) -> Option<(f64, f64, f64)> {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    // OpenRouter spells Claude versions with dots (claude-sonnet-4.5).
    let name = if name.starts_with("claude") {
        name.replace('.', "-")
    } else {
        name
    };
    PRICES
        .iter()
        .filter(|(prefix, ..)| name.starts_with(prefix) && boundary(&name[prefix.len()..]))
        .max_by_key(|(prefix, ..)| prefix.len())
        .map(|&(_, i, c, o)| (i, c, o))
}

/// `gpt-4o` must not price `gpt-4o1`: the prefix has to end at a separator.
fn boundary(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with(['-', ':', '@', '.', '_'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            ..Default::default()
        }
    }

    #[test]
    fn known_models_are_priced() {
        let u = usage(1_000_000, 1_000_000);
        assert!((estimate_cost_usd("openai", "gpt-4o", &u) - 12.5).abs() < 1e-9);
        assert!((estimate_cost_usd("openai", "gpt-4o-mini-2024-07-18", &u) - 0.75).abs() < 1e-9);
        assert!(
            (estimate_cost_usd("anthropic", "claude-sonnet-4-20250514", &u) - 18.0).abs() < 1e-9
        );
        assert!(
            (estimate_cost_usd("openrouter", "anthropic/claude-sonnet-4.5", &u) - 18.0).abs()
                < 1e-9
        );
        assert!((estimate_cost_usd("google", "gemini-2.5-flash-lite", &u) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn cached_tokens_and_unknown_models() {
        // OpenAI: 400k of the 1M input tokens were cache hits.
        let u = Usage {
            cache_read_input_tokens: 400_000,
            ..usage(1_000_000, 0)
        };
        assert!(
            (estimate_cost_usd("openai", "gpt-4o", &u) - (0.6 * 2.5 + 0.4 * 1.25)).abs() < 1e-9
        );
        // Anthropic: cache reads and writes are on top of input_tokens.
        let u = Usage {
            cache_read_input_tokens: 1_000_000,
            cache_creation_input_tokens: 1_000_000,
            ..usage(0, 0)
        };
        assert!(
            (estimate_cost_usd("anthropic", "claude-sonnet-4", &u) - (0.3 + 3.75)).abs() < 1e-9
        );
        assert_eq!(
            estimate_cost_usd("azure", "my-deployment", &usage(10, 10)),
            0.0
        );
        assert_eq!(estimate_cost_usd("ollama", "gpt-4o", &usage(10, 10)), 0.0);
        assert_eq!(estimate_cost_usd("openai", "gpt-4o1", &usage(10, 10)), 0.0);
    }
}
