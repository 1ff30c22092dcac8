//! Page arithmetic for the Agent Protocol lists. Both spellings are accepted:
//! `page`/`size` (the AutoGPT document) and `current_page`/`page_size` (the
//! official spec and its clients).

use crate::{
    error::{Error, Result},
    proto::ap::Pagination,
};

pub const DEFAULT_SIZE: i32 = 10;
pub const MAX_SIZE: i32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: i32,
    pub size: i32,
}

impl Page {
    /// Resolves the aliases. Conflicting values or values below 1 are an
    /// error; a size above 100 is reduced to 100 (as AIP-158 advises).
    pub fn resolve(
        page: Option<i32>,
        size: Option<i32>,
        current_page: Option<i32>,
        page_size: Option<i32>,
    ) -> Result<Self> {
        let page = pick("page", "current_page", page, current_page)?.unwrap_or(1);
        let size = pick("size", "page_size", size, page_size)?.unwrap_or(DEFAULT_SIZE);
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
            size: size.min(MAX_SIZE),
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
            proptest::prop_assert!(p.size <= MAX_SIZE);
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
}
