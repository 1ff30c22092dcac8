//! Paging and the checks of list and stream queries, for both dialects,
//! with each dialect's limits written here once:
//!
//! - Agent Protocol lists: `page`/`size` (the AutoGPT document) or
//!   `current_page`/`page_size` (the official spec and its clients);
//! - Trae `GET /api/tasks`: `limit` and `offset`;
//! - both: the `status` filter, and where an event stream resumes
//!   (`after_seq`, and on SSE `Last-Event-ID`).

use axum::http::HeaderMap;

use crate::{
    clock,
    error::{Error, Result},
    proto::ap::Pagination,
    tasks::TaskStatus,
};

/// Agent Protocol: items per page by default, and at most (a larger size is
/// reduced to it, as AIP-158 advises).
const AP_DEFAULT_SIZE: i32 = 10;
const AP_MAX_SIZE: i32 = 100;

/// Trae `GET /api/tasks`: tasks per response by default, and at most (a
/// larger limit is refused).
const TRAE_DEFAULT_LIMIT: i32 = 100;
const TRAE_MAX_LIMIT: i32 = 1000;

/// What each dialect says after `unknown status "…"`.
pub const TRAE_STATUS_HINT: &str = "";
pub const AP_STATUS_HINT: &str = "; use created, running, completed, failed or stopped";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: i32,
    pub size: i32,
}

impl Page {
    /// Resolves the aliases. Conflicting values or values below 1 are an
    /// error; a size above the limit is reduced to it.
    pub fn resolve(
        page: Option<i32>,
        size: Option<i32>,
        current_page: Option<i32>,
        page_size: Option<i32>,
    ) -> Result<Self> {
        let page = pick("page", "current_page", page, current_page)?.unwrap_or(1);
        let size = pick("size", "page_size", size, page_size)?.unwrap_or(AP_DEFAULT_SIZE);
        if page < 1 {
            return Err(Error::invalid(format!(
                "page must be at least 1, got {page}"
            )));
        }
        if size < 1 {
            return Err(Error::invalid(format!(
                "size must be at least 1, got {size}"
            )));
        }
        Ok(Page {
            page,
            size: size.min(AP_MAX_SIZE),
        })
    }

    pub fn offset(self) -> i64 {
        (i64::from(self.page) - 1) * i64::from(self.size)
    }

    pub fn limit(self) -> i64 {
        i64::from(self.size)
    }

    /// Both key sets, filled from one page and the total.
    pub fn pagination(self, total: i64) -> Pagination {
        let pages = i32::try_from((total + i64::from(self.size) - 1) / i64::from(self.size))
            .unwrap_or(i32::MAX);
        let total = i32::try_from(total).unwrap_or(i32::MAX);
        Pagination {
            page: self.page,
            size: self.size,
            total,
            pages,
            total_items: total,
            total_pages: pages,
            current_page: self.page,
            page_size: self.size,
        }
    }
}

fn pick(a_name: &str, b_name: &str, a: Option<i32>, b: Option<i32>) -> Result<Option<i32>> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => Err(Error::invalid(format!(
            "{a_name}={x} and {b_name}={y} disagree; give one of them"
        ))),
        (x, y) => Ok(x.or(y)),
    }
}

/// A Trae list's window: at most `limit` tasks, after the first `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: i64,
    pub offset: Option<i64>,
}

impl Window {
    pub fn resolve(limit: Option<i32>, offset: Option<i32>) -> Result<Self> {
        let limit = match limit {
            None => TRAE_DEFAULT_LIMIT,
            Some(n) if (1..=TRAE_MAX_LIMIT).contains(&n) => n,
            Some(n) => {
                return Err(Error::invalid(format!(
                    "limit must be between 1 and {TRAE_MAX_LIMIT}, got {n}"
                )));
            }
        };
        let offset = match offset {
            Some(n) if n < 0 => {
                return Err(Error::invalid(format!(
                    "offset must not be negative, got {n}"
                )));
            }
            other => other.map(i64::from),
        };
        Ok(Window {
            limit: i64::from(limit),
            offset,
        })
    }
}

/// The `status` filter of a task list: empty means every status; `hint` is
/// the dialect's `*_STATUS_HINT`.
pub fn status_filter(s: &str, hint: &str) -> Result<Option<TaskStatus>> {
    if s.is_empty() {
        return Ok(None);
    }
    TaskStatus::parse(s)
        .map(Some)
        .ok_or_else(|| Error::invalid(format!("unknown status {s:?}{hint}")))
}

/// The Agent Protocol's `created_after` filter: empty means none.
pub fn created_after(s: &str) -> Result<Option<i64>> {
    if s.is_empty() {
        return Ok(None);
    }
    clock::parse_iso(s)
        .map(Some)
        .ok_or_else(|| Error::invalid(format!("created_after {s:?} is not an ISO-8601 date-time")))
}

/// `?after_seq=N` of an SSE path (gRPC callers send a `uint32`); the last one
/// counts if repeated.
pub fn after_seq_param(params: &[(String, String)]) -> Result<Option<u32>> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == "after_seq")
        .map(|(_, v)| v.parse::<u32>())
        .transpose()
        .map_err(|_| Error::invalid("after_seq must be a non-negative integer"))
}

/// The `Last-Event-ID` header: the seq of the last event an `EventSource`
/// saw, sent when it reconnects. Empty means none (an empty `id:` resets the
/// browser's resume point); the last one counts if repeated, as for
/// `after_seq`.
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<u32>> {
    let Some(value) = headers.get_all("last-event-id").iter().next_back() else {
        return Ok(None);
    };
    let bad = || Error::invalid("Last-Event-ID must be a non-negative integer (an event's seq)");
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u32>().map(Some).map_err(|_| bad())
}

/// Where a stream resumes: after the later of the two points (none: from
/// the start). An `EventSource` reconnects to the URL it was opened with, so
/// `?after_seq=` is where the reader first started and `Last-Event-ID` is
/// how far it has got since; whichever is further along has been seen.
pub fn resume_after(after_seq: Option<u32>, last_event_id: Option<u32>) -> i64 {
    i64::from(after_seq.max(last_event_id).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_aliases_and_limits() {
        assert_eq!(
            Page::resolve(None, None, None, None).unwrap(),
            Page { page: 1, size: 10 }
        );
        assert_eq!(
            Page::resolve(None, None, Some(2), Some(25)).unwrap(),
            Page { page: 2, size: 25 }
        );
        assert_eq!(
            Page::resolve(Some(3), Some(500), None, None).unwrap(),
            Page { page: 3, size: 100 }
        );
        assert!(Page::resolve(Some(0), None, None, None).is_err());
        assert!(Page::resolve(None, Some(-1), None, None).is_err());
        assert!(Page::resolve(Some(1), None, Some(2), None).is_err());
        assert_eq!(Page::resolve(Some(2), None, Some(2), None).unwrap().page, 2);
    }

    proptest::proptest! {
        /// Pages tile the items exactly: the last page holds the last item,
        /// no page starts past the end, and both key sets agree.
        #[test]
        fn pages_cover_every_item(page in 1i32..10_000, size in 1i32..500, total in 0i64..1_000_000) {
            let p = Page::resolve(Some(page), Some(size), None, None).unwrap();
            proptest::prop_assert!(p.size <= AP_MAX_SIZE);
            proptest::prop_assert_eq!(p.offset(), i64::from(page - 1) * i64::from(p.size));
            let pg = p.pagination(total);
            let pages = i64::from(pg.pages);
            proptest::prop_assert!(pages * i64::from(p.size) >= total);
            proptest::prop_assert!(total == 0 || (pages - 1) * i64::from(p.size) < total);
            proptest::prop_assert_eq!((pg.page, pg.size, pg.total, pg.pages), (pg.current_page, pg.page_size, pg.total_items, pg.total_pages));
        }
    }

    #[test]
    fn pagination_counts_pages() {
        let p = Page { page: 1, size: 10 };
        assert_eq!(p.pagination(25).pages, 3);
        assert_eq!(p.pagination(25).total_pages, 3);
        assert_eq!(p.pagination(0).pages, 0);
        assert_eq!(p.pagination(10).pages, 1);
        assert_eq!(Page { page: 3, size: 10 }.offset(), 20);
    }

    #[test]
    fn trae_windows_default_and_refuse_out_of_range() {
        assert_eq!(
            Window::resolve(None, None).unwrap(),
            Window {
                limit: 100,
                offset: None
            }
        );
        assert_eq!(
            Window::resolve(Some(1000), Some(5)).unwrap(),
            Window {
                limit: 1000,
                offset: Some(5)
            }
        );
        for (limit, offset) in [(Some(0), None), (Some(1001), None), (None, Some(-1))] {
            assert!(
                Window::resolve(limit, offset).is_err(),
                "{limit:?} {offset:?}"
            );
        }
    }

    #[test]
    fn unknown_statuses_are_refused_in_each_dialects_words() {
        assert_eq!(status_filter("", TRAE_STATUS_HINT).unwrap(), None);
        assert_eq!(
            status_filter("failed", AP_STATUS_HINT).unwrap(),
            Some(TaskStatus::Failed)
        );
        let message = |hint| status_filter("done", hint).unwrap_err().to_string();
        assert_eq!(message(TRAE_STATUS_HINT), "unknown status \"done\"");
        assert_eq!(
            message(AP_STATUS_HINT),
            "unknown status \"done\"; use created, running, completed, failed or stopped"
        );
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                "last-event-id",
                axum::http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn last_event_id_is_a_seq_or_nothing() {
        assert_eq!(last_event_id(&HeaderMap::new()).ok(), Some(None));
        assert_eq!(
            last_event_id(&headers(&[b""])).ok(),
            Some(None),
            "empty resets"
        );
        assert_eq!(last_event_id(&headers(&[b"12"])).ok(), Some(Some(12)));
        assert_eq!(last_event_id(&headers(&[b"1", b"5"])).ok(), Some(Some(5)));
        assert_eq!(
            last_event_id(&headers(&[b"4294967295"])).ok(),
            Some(Some(u32::MAX))
        );
        for bad in [&b"abc"[..], b"-1", b"1.5", b"4294967296", b"\xff"] {
            assert!(
                matches!(
                    last_event_id(&headers(&[bad])),
                    Err(Error::InvalidRequest(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_later_resume_point_wins() {
        let q = |v: &str| vec![("after_seq".to_string(), v.to_string())];
        assert_eq!(after_seq_param(&[]).ok(), Some(None));
        assert_eq!(after_seq_param(&q("4")).ok(), Some(Some(4)));
        assert!(after_seq_param(&q("x")).is_err());
        assert_eq!(resume_after(None, None), 0);
        assert_eq!(resume_after(Some(4), None), 4);
        assert_eq!(resume_after(None, Some(9)), 9);
        assert_eq!(resume_after(Some(4), Some(9)), 9, "the browser got further");
        assert_eq!(
            resume_after(Some(9), Some(4)),
            9,
            "never replay what the URL skips"
        );
    }
}
