"""Analyst SQL: what may run, decided on ClickHouse's own parse, and the engine limits it runs under.

An analyst query (``/query``, ``pathsentry query``) goes through three layers:

1. :func:`first_filter`: a cheap text check (length, leading keyword) that turns away
   obvious non-queries before the engine sees them. It decides nothing on its own.
2. :func:`vet`: the allow-decision. ClickHouse parses the text (``formatQuerySingleLine``,
   with the text passed as a query *parameter*, never as SQL) into one canonical statement
   without comments; ``EXPLAIN AST`` of that canonical text gives the tree that
   :func:`check_tree` walks. Allowed: one ``SELECT`` (with ``WITH``/``UNION``/subqueries/
   ``JOIN``) reading only tables of the worker's own database or its CTEs,
   ``SHOW TABLES [FROM <db>]`` and ``DESCRIBE <db>.<table>``. Refused: every other statement
   kind (``INSERT``, also behind ``WITH``; DDL; ``SYSTEM``; ``EXPLAIN``...), any table
   function (``file``, ``url``, ``s3``, ``executable``, ``remote``, ``numbers``...), any
   other database (``system.*``, ``INFORMATION_SCHEMA``), ``INTO OUTFILE``, ``FORMAT``, any
   ``SETTINGS`` clause, and scalar functions that reach files, dictionaries, other tables
   or servers, the server's configuration or the clock (``file``, ``dictGet*``,
   ``joinGet``, ``hasColumnInTable``, ``getServerSetting``, ``sleep``...). The canonical
   text, not the text sent, is what runs: what was checked is what executes.
3. :class:`QueryLimits`: the engine's own enforcement. The query runs on a connection
   (chDB: a session) of its own, set once to these limits and then to ``readonly=1``,
   which ClickHouse will not let the connection undo. On chDB that session answers on its
   own thread, so the sink's inserts never queue behind an analyst query.

Measured on chDB 4.4 (engine 26.9), ``tests/test_query_policy.py``: with ``readonly=1``
the engine refuses ``file``/``url``/``executable`` table functions, writes and setting
changes, but still runs scalar ``file()``, ``INTO OUTFILE`` (written by the client side)
and ``numbers()``; those three are refused by the tree check only.

>>> first_filter("DROP TABLE x")
'only SELECT, SHOW TABLES and DESCRIBE are allowed'
>>> QueryLimits().settings()[-1]
('readonly', 1)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pathsentry.config import ClickHouseConfig

__all__ = [
    "DENIED_FUNCTIONS",
    "MAX_QUERY_CHARS",
    "Node",
    "QueryLimits",
    "QueryRefused",
    "SqlParser",
    "check_canonical_text",
    "check_tree",
    "first_filter",
    "parse_explain",
    "vet",
]

#: longest analyst query accepted (characters)
MAX_QUERY_CHARS = 20_000


class QueryRefused(PermissionError):
    """An analyst query that is not allowed to run; the message says why."""


@dataclass(frozen=True)
class QueryLimits:
    """Limits every analyst query runs under (documented defaults).

    ``max_execution_time_s``: wall time of one query; ``max_result_rows``: rows returned
    (more is an error, not a silent cut); ``max_memory_bytes``: memory of one query.
    """

    max_execution_time_s: float = 10.0
    max_result_rows: int = 100_000
    max_memory_bytes: int = 1 << 30

    @classmethod
    def from_config(cls, ch: ClickHouseConfig) -> QueryLimits:
        """The limits configured in ``[clickhouse]`` (``query_max_*``)."""
        return cls(ch.query_max_execution_time_s, ch.query_max_result_rows,
                   ch.query_max_memory_mib << 20)

    def settings(self) -> list[tuple[str, str | int | float]]:
        """The settings in the order they must be applied: ``readonly`` last (after it,
        nothing else can be changed)."""
        return [
            ("max_execution_time", self.max_execution_time_s),
            ("timeout_overflow_mode", "throw"),
            ("max_result_rows", self.max_result_rows),
            ("result_overflow_mode", "throw"),
            ("max_memory_usage", self.max_memory_bytes),
            ("allow_introspection_functions", 0),
            ("allow_ddl", 0),
            ("readonly", 1),
        ]

    def check_rows(self, rows: int) -> None:
        """The engine's ``max_result_rows`` is checked per block and missed a top-level
        ``arrayJoin`` on chDB 4.4: the rows actually returned are checked here too.

        >>> QueryLimits(max_result_rows=10).check_rows(11)
        Traceback (most recent call last):
        ...
        OverflowError: Limit for result exceeded: 11 rows, max_result_rows is 10
        """
        if rows > self.max_result_rows:
            raise OverflowError(
                f"Limit for result exceeded: {rows} rows, max_result_rows is {self.max_result_rows}"
            )

    def set_statements(self) -> list[str]:
        """``SET`` statements applying :meth:`settings` to a session, one each.

        >>> QueryLimits(max_execution_time_s=2).set_statements()[:2]
        ['SET max_execution_time = 2', "SET timeout_overflow_mode = 'throw'"]
        """
        out = []
        for name, value in self.settings():
            out.append(f"SET {name} = " + (f"'{value}'" if isinstance(value, str) else str(value)))
        return out


_LEADING = re.compile(r"^\s*(\(\s*)*(SELECT|WITH|SHOW|DESCRIBE|DESC)\b", re.IGNORECASE)


def first_filter(sql: str) -> str | None:
    """Why a text is turned away before parsing, or None. Not the allow-decision.

    >>> first_filter("  select 1"), first_filter("INSERT INTO t VALUES (1)")
    (None, 'only SELECT, SHOW TABLES and DESCRIBE are allowed')
    """
    if not sql.strip():
        return "empty query"
    if len(sql) > MAX_QUERY_CHARS:
        return f"query longer than {MAX_QUERY_CHARS} characters"
    if "\x00" in sql:
        return "NUL byte in query"
    if not _LEADING.match(sql):
        return "only SELECT, SHOW TABLES and DESCRIBE are allowed"
    return None


@dataclass
class Node:
    """One node of ``EXPLAIN AST``: its kind (``SelectQuery``, ``Function``...), the rest of
    its line (name, alias), and its children."""

    kind: str
    text: str
    declared: int
    children: list[Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The node's name: the first word after its kind (``file`` in ``Function file``)."""
        return self.text.split(" ", 1)[0] if self.text else ""

    def walk(self) -> list[Node]:
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        return out


_LINE = re.compile(r"^( *)([A-Za-z][A-Za-z0-9_]*)(.*?)(?: \(children (\d+)\))?$")


def parse_explain(lines: Sequence[str]) -> Node:
    """The tree of ``EXPLAIN AST`` output, one node per line, indented by depth.

    Strict: every line must be a node one level below some earlier node, and every node
    must have exactly the children it declares; anything else is refused (an identifier
    that would break a line cannot pass for tree structure).

    >>> t = parse_explain(["Root (children 1)", " Function file (children 1)", "  Literal 'x'"])
    >>> t.children[0].kind, t.children[0].name, t.children[0].children[0].text
    ('Function', 'file', "'x'")
    >>> try:
    ...     parse_explain(["Root (children 2)", " Literal 1"])
    ... except QueryRefused as e:
    ...     print(e)
    query parse tree not understood (node 'Root' has 1 of 2 children)
    """
    stack: list[Node] = []
    root: Node | None = None
    for line in lines:
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise QueryRefused("query parse tree not understood (unexpected line)")
        depth = len(m.group(1))
        node = Node(m.group(2), (m.group(3) or "").strip(), int(m.group(4) or 0))
        if depth == 0:
            if root is not None:
                raise QueryRefused("query parse tree not understood (more than one root)")
            root = node
            stack = [node]
            continue
        if depth > len(stack):
            raise QueryRefused("query parse tree not understood (indentation)")
        del stack[depth:]
        stack[-1].children.append(node)
        stack.append(node)
    if root is None:
        raise QueryRefused("query parse tree not understood (empty)")
    for n in root.walk():
        if len(n.children) != n.declared:
            raise QueryRefused(
                f"query parse tree not understood (node {n.kind!r} has "
                f"{len(n.children)} of {n.declared} children)"
            )
    return root


#: Scalar functions refused anywhere in a query (lower-case), and name prefixes refused:
#: they read files, dictionaries, Join tables or other servers, reveal server
#: configuration, or hold the query thread.
DENIED_FUNCTIONS = frozenset({
    "file", "hascolumnintable", "getserversetting", "getmergetreesetting", "getmacro",
    "getclienthttpheader", "currentrequesturl", "getserverport", "sleep", "sleepeachrow",
    "catboostevaluate", "evalmlmethod", "filesystemavailable", "filesystemcapacity",
    "filesystemunreserved", "globalvariable", "fuzzquery", "input", "url", "s3",
    "executable", "remote", "remotesecure", "cluster", "clusterallreplicas",
})
_DENIED_PREFIXES = ("dict", "joinget", "naivebayes", "__", "addressto", "demangle")
_IN_FUNCTIONS = frozenset({
    "in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin",
    "globalnotnullin",
})


def _own_table(name: str, db: str) -> bool:
    """A table name in the worker's database, or unqualified (a CTE or a table of the
    connection's current database, which is the worker's)."""
    parts = name.split(".")
    return len(parts) == 1 or (len(parts) == 2 and parts[0] == db)


def check_tree(root: Node, db: str, canonical: str) -> None:
    """Raise :class:`QueryRefused` unless the tree is an allowed read (see module doc)."""
    if root.kind == "ShowTables":
        if canonical not in ("SHOW TABLES", f"SHOW TABLES FROM {db}"):
            raise QueryRefused(f"only SHOW TABLES [FROM {db}] is allowed")
        return
    if root.kind == "DescribeQuery":
        kids = root.children
        if (len(kids) != 1 or kids[0].kind != "TableExpression" or len(kids[0].children) != 1
                or kids[0].children[0].kind != "TableIdentifier"
                or not _own_table(kids[0].children[0].name, db)):
            raise QueryRefused(f"DESCRIBE is allowed on tables of {db} only")
        return
    if root.kind != "SelectWithUnionQuery":
        raise QueryRefused(f"only SELECT, SHOW TABLES and DESCRIBE are allowed, not {root.kind}")
    for n in root.walk():
        _check_node(n, db)


def _check_node(n: Node, db: str) -> None:
    if n.kind == "SelectWithUnionQuery" and len(n.children) != 1:
        raise QueryRefused("INTO OUTFILE, FORMAT and SETTINGS are not allowed")
    if n.kind in ("Set", "SetQuery", "InsertQuery"):
        raise QueryRefused("SETTINGS and writes are not allowed")
    if n.kind == "TableExpression":
        for c in n.children:
            if c.kind == "Function":
                raise QueryRefused(f"table function {c.name}() is not allowed")
            if c.kind in ("TableIdentifier", "Identifier") and not _own_table(c.name, db):
                raise QueryRefused(f"only tables of {db} may be read, not {c.name}")
    if n.kind == "Function":
        fn = n.name.lower()
        if fn in DENIED_FUNCTIONS or fn.startswith(_DENIED_PREFIXES):
            raise QueryRefused(f"function {n.name}() is not allowed")
        if fn in _IN_FUNCTIONS and n.children:
            args = n.children[0].children
            rhs = args[1] if len(args) == 2 else None
            if rhs is not None and rhs.kind == "Identifier" and not _own_table(rhs.name, db):
                raise QueryRefused(f"only tables of {db} may be read, not {rhs.name}")


def check_canonical_text(canonical: str) -> None:
    """Refuse quoted identifiers the tree dump cannot show faithfully: escapes (a newline
    in a name would forge lines of ``EXPLAIN AST``) and dots (``a.b`` in one name would pass
    for a database and a table).

    >>> check_canonical_text("SELECT 'a.b\\\\n' AS `x y` FROM t")
    >>> try:
    ...     check_canonical_text("SELECT 1 AS `x\\\\ny`")
    ... except QueryRefused as e:
    ...     print(e)
    quoted names may not contain escapes, control characters or dots
    """
    i, n = 0, len(canonical)
    while i < n:
        ch = canonical[i]
        if ch == "'":
            i += 1
            while i < n and canonical[i] != "'":
                i += 2 if canonical[i] == "\\" else 1
        elif ch in "`\"":
            j = i + 1
            while j < n and canonical[j] != ch:
                c = canonical[j]
                if c in "\\." or ord(c) < 32 or c == "\x7f":
                    raise QueryRefused(
                        "quoted names may not contain escapes, control characters or dots"
                    )
                j += 1
            i = j
        elif ord(ch) < 32:
            raise QueryRefused("control character in query")
        i += 1


class SqlParser(Protocol):
    """What :func:`vet` needs from a ClickHouse connection."""

    def canonical_sql(self, sql: str) -> str:
        """ClickHouse's ``formatQuerySingleLine`` of ``sql`` (passed as data, not SQL)."""
        ...

    def explain_ast(self, sql: str) -> list[str]:
        """The lines of ``EXPLAIN AST <sql>``."""
        ...


def vet(sql: str, db: str, parser: SqlParser) -> str:
    """The canonical text of ``sql`` if it is allowed to run, else :class:`QueryRefused`."""
    reason = first_filter(sql)
    if reason:
        raise QueryRefused(reason)
    try:
        canonical = parser.canonical_sql(sql)
    except QueryRefused:
        raise
    except Exception as e:
        raise QueryRefused(f"query does not parse: {_first_line(e)}") from None
    check_canonical_text(canonical)
    if first_filter(canonical):
        raise QueryRefused("only SELECT, SHOW TABLES and DESCRIBE are allowed")
    try:
        lines = parser.explain_ast(canonical)
    except Exception as e:
        raise QueryRefused(f"query refused by ClickHouse: {_first_line(e)}") from None
    check_tree(parse_explain(lines), db, canonical)
    return canonical


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
