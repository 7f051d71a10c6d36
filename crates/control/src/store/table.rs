//! The queries every resource's table shares, written once: a page of an owner's rows, one
//! row by id under its owner, a row inserted or rewritten whole, a row deleted; and the write
//! transaction they run in.

use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use tokio::sync::MutexGuard;

use super::*;

pub(crate) type SqliteQuery<'q> = Query<'q, Sqlite, SqliteArguments<'q>>;

/// A table whose rows read into `Self`.
pub(crate) trait Table: for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin {
    const TABLE: &'static str;
    /// Every column, in the order [`Table::bind_columns`] binds them.
    const COLUMNS: &'static [&'static str];
    /// The column a list is scoped by: `trunk_sid`, or `account_sid` for top-level rows.
    const OWNER: &'static str;
    /// A list's order, ending in the key so pages are stable.
    const ORDER: &'static str;

    /// Binds every column's value, in [`Table::COLUMNS`] order.
    fn bind_columns<'q>(&'q self, query: SqliteQuery<'q>) -> SqliteQuery<'q>;
}

/// A table whose rows each have an id of their own.
pub(crate) trait Keyed: Table {
    /// The id column.
    const KEY: &'static str = "id";

    fn key(&self) -> &str;

    /// Selects one row, binding its id and then its owner: [`Table::OWNER`] unless a table
    /// scopes single rows otherwise (a credential is found by its trunk's account).
    fn find_sql() -> String {
        format!(
            "SELECT * FROM {} WHERE {} = ? AND {} = ?",
            Self::TABLE,
            Self::KEY,
            Self::OWNER
        )
    }
}

/// Implements [`Table`] (and [`Keyed`], given `key`) for a record whose fields are its
/// table's columns, named alike.
macro_rules! table {
    ($record:ty = $table:literal by $owner:literal order $order:literal
        $(key $key:ident)? { $($column:ident),+ $(,)? }) => {
        impl $crate::store::Table for $record {
            const TABLE: &'static str = $table;
            const COLUMNS: &'static [&'static str] = &[$(stringify!($column)),+];
            const OWNER: &'static str = $owner;
            const ORDER: &'static str = $order;

            fn bind_columns<'q>(
                &'q self,
                query: $crate::store::SqliteQuery<'q>,
            ) -> $crate::store::SqliteQuery<'q> {
                query$(.bind(&self.$column))+
            }
        }
        $(
            impl $crate::store::Keyed for $record {
                const KEY: &'static str = stringify!($key);

                fn key(&self) -> &str {
                    &self.$key
                }
            }
        )?
    };
}

/// The row `id` under `owner` (see [`Keyed::find_sql`]), read through `executor`.
async fn find<'e, R, E>(executor: E, id: &str, owner: &str) -> StoreResult<Option<R>>
where
    R: Keyed,
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(&R::find_sql())
        .bind(id)
        .bind(owner)
        .fetch_optional(executor)
        .await?)
}

/// A write transaction. It holds the store's write lock until it is committed or dropped.
pub(super) struct Write<'s> {
    // Declared before the lock so it drops first: an uncommitted transaction rolls back
    // before another writer may start.
    pub(super) tx: Transaction<'static, Sqlite>,
    _lock: MutexGuard<'s, ()>,
}

impl Write<'_> {
    pub(super) async fn find<R: Keyed>(&mut self, id: &str, owner: &str) -> StoreResult<Option<R>> {
        find(&mut *self.tx, id, owner).await
    }

    pub(super) async fn insert<R: Table>(&mut self, rec: &R) -> StoreResult<()> {
        let placeholders = vec!["?"; R::COLUMNS.len()].join(", ");
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({placeholders})",
            R::TABLE,
            R::COLUMNS.join(", ")
        );
        rec.bind_columns(sqlx::query(&sql))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Writes every column of the row `rec.key()` from `rec`.
    pub(super) async fn update<R: Keyed>(&mut self, rec: &R) -> StoreResult<()> {
        let assignments: Vec<String> = R::COLUMNS.iter().map(|c| format!("{c} = ?")).collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE {} = ?",
            R::TABLE,
            assignments.join(", "),
            R::KEY
        );
        rec.bind_columns(sqlx::query(&sql))
            .bind(rec.key())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub(super) async fn delete<R: Keyed>(&mut self, rec: &R) -> StoreResult<()> {
        let sql = format!("DELETE FROM {} WHERE {} = ?", R::TABLE, R::KEY);
        sqlx::query(&sql)
            .bind(rec.key())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub(super) async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Starts a write (see the module docs: writes are serialized).
    pub(super) async fn write(&self) -> StoreResult<Write<'_>> {
        let lock = self.write.lock().await;
        let tx = self.pool.begin().await?;
        Ok(Write { tx, _lock: lock })
    }

    /// Starts a write under the trunk `trunk_sid`, which must exist ([`StoreError::NotFound`]).
    pub(super) async fn write_under(
        &self,
        trunk_sid: &str,
    ) -> StoreResult<(Write<'_>, TrunkRecord)> {
        let mut w = self.write().await?;
        let trunk = Self::trunk_in_tx(&mut w.tx, trunk_sid)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok((w, trunk))
    }

    /// A page of `owner`'s rows, in the table's order.
    pub(crate) async fn list_of<R: Table>(&self, owner: &str, page: Page) -> StoreResult<Vec<R>> {
        let sql = format!(
            "SELECT * FROM {} WHERE {} = ? ORDER BY {} LIMIT ? OFFSET ?",
            R::TABLE,
            R::OWNER,
            R::ORDER
        );
        Ok(sqlx::query_as(&sql)
            .bind(owner)
            .bind(i64::from(page.limit))
            .bind(i64::from(page.offset))
            .fetch_all(&self.pool)
            .await?)
    }

    /// The row `id` under `owner` (see [`Keyed::find_sql`]).
    pub(crate) async fn find<R: Keyed>(&self, id: &str, owner: &str) -> StoreResult<Option<R>> {
        find(&self.pool, id, owner).await
    }

    /// Deletes the row `id` under `owner` in one transaction; returns what was deleted.
    pub(crate) async fn delete_of<R: Keyed>(
        &self,
        id: &str,
        owner: &str,
    ) -> StoreResult<Option<R>> {
        let mut w = self.write().await?;
        let rec: Option<R> = w.find(id, owner).await?;
        if let Some(rec) = &rec {
            w.delete(rec).await?;
            w.commit().await?;
        }
        Ok(rec)
    }
}
