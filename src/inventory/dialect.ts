/**
 * What differs between the inventory's two dialects, in one place. Migrations are written once, in SQLite's
 * terms (`integer`, `text`, `autoIncrement`); on PostgreSQL a schema plugin translates the column definitions so
 * that every value round-trips exactly as on SQLite:
 *
 * - `integer` → `bigint`: SQLite integers are 64-bit (sizes in bytes, counters); PostgreSQL's `integer` is 32-bit.
 *   int8 is read back as a JavaScript number (db.ts), so a 0/1 boolean column reads `1`, as on SQLite.
 * - `integer primary key autoincrement` → `bigserial primary key` (Kysely would emit MySQL's `auto_increment`).
 * - `text` → `text collate "C"`: comparisons and ORDER BY are bytewise, like SQLite's BINARY collation,
 *   whatever locale the database was created with (listings sort identically on both).
 *
 * The plugin touches column definitions only (CREATE TABLE, ALTER TABLE ADD COLUMN), so SQLite's schema is
 * exactly what the migrations say (src/inventory/testdata/sqlite-schema.sql is the proof).
 */
import {
  ColumnDefinitionNode,
  DataTypeNode,
  type Kysely,
  type KyselyPlugin,
  OperationNodeTransformer,
  PostgresAdapter,
  type PluginTransformQueryArgs,
  type PluginTransformResultArgs,
  type QueryId,
  type QueryResult,
  type RawBuilder,
  RawNode,
  type RootOperationNode,
  type UnknownRow,
  sql,
} from "kysely";
import { BugError } from "../errors.ts";

export type Dialect = "sqlite" | "postgres";

/** Which dialect a Kysely instance (or a transaction of one) speaks. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- any database shape
export function dialectOf(db: Kysely<any>): Dialect {
  return db.getExecutor().adapter instanceof PostgresAdapter ? "postgres" : "sqlite";
}

class PortableColumns extends OperationNodeTransformer {
  protected override transformColumnDefinition(node: ColumnDefinitionNode, queryId?: QueryId): ColumnDefinitionNode {
    const def = super.transformColumnDefinition(node, queryId);
    if (!DataTypeNode.is(def.dataType)) return def;
    const type = def.dataType.dataType;
    if (def.autoIncrement) {
      if (type !== "integer") throw new BugError(`an autoIncrement column must be "integer", not "${type}"`);
      return Object.freeze({ ...def, dataType: DataTypeNode.create("bigserial"), autoIncrement: false });
    }
    if (type === "integer") return Object.freeze({ ...def, dataType: DataTypeNode.create("bigint") });
    if (type === "text") return Object.freeze({ ...def, frontModifiers: Object.freeze([RawNode.createWithSql('collate "C"'), ...(def.frontModifiers ?? [])]) });
    return def;
  }
}

/** Translates the migrations' column types for PostgreSQL (see the header). */
export class PostgresSchemaPlugin implements KyselyPlugin {
  private readonly transformer = new PortableColumns();

  transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
    return this.transformer.transformNode(args.node, args.queryId);
  }

  async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return args.result;
  }
}

/**
 * `(…)` for `where(col, "in", …)`: the strings as ONE JSON parameter, unpacked by the database — a list of
 * thousands of ids would exceed SQLite's limit on bound variables (and PostgreSQL's 65535) one per value.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- any database shape
export function jsonTextList(db: Kysely<any>, values: readonly string[]): RawBuilder<string> {
  const json = JSON.stringify(values);
  return dialectOf(db) === "postgres" ? sql<string>`(SELECT json_array_elements_text(CAST(${json} AS json)))` : sql<string>`(SELECT value FROM json_each(${json}))`;
}

/** Whether an inventory spec names a PostgreSQL server (`postgres://…`, `postgresql://…`) rather than a file. */
export function isPostgresUrl(spec: string): boolean {
  return /^postgres(ql)?:\/\//i.test(spec);
}

/** The URL with any password replaced by `***`: the only form of it that may appear in a message or a log. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== "") u.password = "***";
    for (const k of [...u.searchParams.keys()]) if (/^(password|sslpassword|sslkey)$/i.test(k)) u.searchParams.set(k, "***");
    return u.toString();
  } catch {
    // Not parseable as a URL: show nothing of it rather than risk showing a password.
    return "postgres://(unparseable URL)";
  }
}
