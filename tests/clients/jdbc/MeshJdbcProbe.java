/*
 * Drives the Arrow Flight SQL JDBC driver for tests/test_jdbc.py.
 *
 *   java --add-opens=java.base/java.nio=ALL-UNNAMED -cp flight-sql-jdbc-driver.jar:classes \
 *        MeshJdbcProbe JDBC_URL [USER PASSWORD] < commands
 *
 * Opens one connection, then reads one command per line from stdin and answers each with one
 * line of JSON on stdout.  Fields are separated by tabs; text travels base64-encoded (UTF-8) so
 * SQL and values may hold tabs, newlines, quotes and any Unicode.
 *
 *   query    SQL                    Statement.executeQuery
 *   prepare  ID SQL                 Connection.prepareStatement, kept open under ID; answers with
 *                                   the result and parameter metadata
 *   execute  ID PARAM...            bind PARAMs (TYPE:BASE64 each) and executeQuery
 *   close    ID                     PreparedStatement.close
 *   meta     METHOD ARG...          any DatabaseMetaData method, by name and argument count;
 *                                   ARG is n (null), s:BASE64, i:INT, b:true|false or a:BASE64 of a
 *                                   comma-separated String[]
 *   conn     METHOD                 a no-argument Connection method (getCatalog, getSchema, ...)
 *
 * Parameter TYPEs: int, bigint, double, decimal, string, date (yyyy-mm-dd), timestamptz (an ISO
 * instant, bound as java.sql.Timestamp), timestamptz-object (bound as OffsetDateTime via
 * setObject), boolean, null-TYPE (setNull with java.sql.Types.TYPE).
 *
 * Every answer is {"ok": true, ...} or {"ok": false, "error": "...", "sqlstate": ...}; a result
 * set is {"columns": [...], "rows": [[cell, ...], ...]} where a cell is null or
 * {"c": Java class, "v": exact text, "s": getString()} (plus "getObject_error" where getObject(int)
 * failed and getTimestamp was read instead).  Exact text: BigDecimal.toPlainString,
 * Double.toString, a Timestamp or OffsetDateTime as its UTC instant, a Date as yyyy-mm-dd.
 */

import java.lang.reflect.Method;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.JDBCType;
import java.sql.ParameterMetaData;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;

public final class MeshJdbcProbe {
    private static final int MAX_ROWS = 10_000;

    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        if (args.length != 1 && args.length != 3) {
            System.err.println("usage: MeshJdbcProbe JDBC_URL [USER PASSWORD]");
            System.exit(2);
        }
        Connection conn;
        try {
            conn = args.length == 3
                    ? DriverManager.getConnection(args[0], args[1], args[2])
                    : DriverManager.getConnection(args[0]);
        } catch (SQLException e) {
            out.println(new Json().obj().key("ok").value(false).key("connect").value(false)
                    .key("error").value(describe(e)).key("sqlstate").value(e.getSQLState()).end());
            System.exit(1);
            return;
        }
        out.println(new Json().obj().key("ok").value(true).key("connect").value(true).end());
        Map<String, PreparedStatement> prepared = new HashMap<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            if (line.isEmpty()) {
                continue;
            }
            String[] f = line.split("\t", -1);
            Json json = new Json().obj();
            try {
                switch (f[0]) {
                    case "query": {
                        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(text(f[1]))) {
                            json.key("ok").value(true);
                            resultSet(json, rs);
                        }
                        break;
                    }
                    case "prepare": {
                        PreparedStatement ps = conn.prepareStatement(text(f[2]));
                        prepared.put(f[1], ps);
                        json.key("ok").value(true);
                        json.key("result_columns");
                        ResultSetMetaData md = ps.getMetaData();
                        if (md == null) {
                            json.value((String) null);
                        } else {
                            columns(json, md);
                        }
                        json.key("parameters").arr();
                        ParameterMetaData pmd = ps.getParameterMetaData();
                        for (int i = 1; i <= pmd.getParameterCount(); i++) {
                            json.obj().key("type").value(typeName(pmd.getParameterType(i)))
                                    .key("type_name").value(pmd.getParameterTypeName(i))
                                    .key("class").value(pmd.getParameterClassName(i)).end();
                        }
                        json.end();
                        break;
                    }
                    case "execute": {
                        PreparedStatement ps = prepared.get(f[1]);
                        ps.clearParameters();
                        for (int i = 2; i < f.length; i++) {
                            bind(ps, i - 1, f[i]);
                        }
                        try (ResultSet rs = ps.executeQuery()) {
                            json.key("ok").value(true);
                            resultSet(json, rs);
                        }
                        break;
                    }
                    case "close": {
                        prepared.remove(f[1]).close();
                        json.key("ok").value(true);
                        break;
                    }
                    case "meta": {
                        json.key("ok").value(true);
                        callMeta(json, conn.getMetaData(), f);
                        break;
                    }
                    case "conn": {
                        Object value = Connection.class.getMethod(f[1]).invoke(conn);
                        json.key("ok").value(true).key("value").scalar(value);
                        break;
                    }
                    default:
                        throw new IllegalArgumentException("unknown command " + f[0]);
                }
            } catch (Throwable e) {
                Throwable cause = e instanceof java.lang.reflect.InvocationTargetException ? e.getCause() : e;
                System.err.println("command " + f[0] + " failed:");
                cause.printStackTrace();  // to stderr: the tests show it when an assertion fails
                json = new Json().obj().key("ok").value(false).key("error").value(describe(cause))
                        .key("sqlstate").value(cause instanceof SQLException ? ((SQLException) cause).getSQLState() : null);
            }
            out.println(json.end());
        }
        for (PreparedStatement ps : prepared.values()) {
            ps.close();
        }
        conn.close();
    }

    private static String text(String b64) {
        return new String(Base64.getDecoder().decode(b64), StandardCharsets.UTF_8);
    }

    /** The exception's class and message, then each cause's, as one line. */
    private static String describe(Throwable e) {
        StringBuilder sb = new StringBuilder();
        for (Throwable t = e; t != null; t = t.getCause() == t ? null : t.getCause()) {
            if (sb.length() > 0) {
                sb.append(" <- ");
            }
            sb.append(t.getClass().getName()).append(": ").append(t.getMessage());
        }
        return sb.toString();
    }

    private static String typeName(int type) {
        try {
            return JDBCType.valueOf(type).getName();
        } catch (IllegalArgumentException e) {
            return Integer.toString(type);
        }
    }

    private static void bind(PreparedStatement ps, int index, String param) throws SQLException {
        int colon = param.indexOf(':');
        String type = param.substring(0, colon);
        String value = text(param.substring(colon + 1));
        switch (type) {
            case "int": ps.setInt(index, Integer.parseInt(value)); break;
            case "bigint": ps.setLong(index, Long.parseLong(value)); break;
            case "double": ps.setDouble(index, Double.parseDouble(value)); break;
            case "decimal": ps.setBigDecimal(index, new BigDecimal(value)); break;
            case "string": ps.setString(index, value); break;
            case "date": ps.setDate(index, java.sql.Date.valueOf(value)); break;
            case "timestamptz": ps.setTimestamp(index, Timestamp.from(Instant.parse(value))); break;
            case "timestamptz-object":
                ps.setObject(index, OffsetDateTime.ofInstant(Instant.parse(value), ZoneOffset.UTC));
                break;
            case "boolean": ps.setBoolean(index, Boolean.parseBoolean(value)); break;
            default:
                if (type.startsWith("null-")) {
                    ps.setNull(index, JDBCType.valueOf(type.substring(5)).getVendorTypeNumber());
                    break;
                }
                throw new IllegalArgumentException("unknown parameter type " + type);
        }
    }

    private static void callMeta(Json json, DatabaseMetaData md, String[] f) throws Exception {
        String name = f[1];
        int argc = f.length - 2;
        Method method = null;
        for (Method m : DatabaseMetaData.class.getMethods()) {
            if (m.getName().equals(name) && m.getParameterCount() == argc) {
                method = m;
                break;
            }
        }
        if (method == null) {
            throw new NoSuchMethodException("DatabaseMetaData." + name + " with " + argc + " arguments");
        }
        Class<?>[] types = method.getParameterTypes();
        Object[] values = new Object[argc];
        for (int i = 0; i < argc; i++) {
            String a = f[i + 2];
            if (a.equals("n")) {
                values[i] = null;
            } else if (a.startsWith("s:")) {
                values[i] = text(a.substring(2));
            } else if (a.startsWith("i:")) {
                values[i] = Integer.parseInt(a.substring(2));
            } else if (a.startsWith("b:")) {
                values[i] = Boolean.parseBoolean(a.substring(2));
            } else if (a.startsWith("a:")) {
                values[i] = text(a.substring(2)).split(",");
            } else {
                throw new IllegalArgumentException("bad argument " + a + " for " + types[i]);
            }
        }
        Object result = method.invoke(md, values);
        if (result instanceof ResultSet) {
            try (ResultSet rs = (ResultSet) result) {
                resultSet(json, rs);
            }
        } else {
            json.key("value").scalar(result);
        }
    }

    private static void columns(Json json, ResultSetMetaData md) throws SQLException {
        json.arr();
        for (int i = 1; i <= md.getColumnCount(); i++) {
            json.obj().key("name").value(md.getColumnLabel(i))
                    .key("type").value(typeName(md.getColumnType(i)))
                    .key("type_name").value(md.getColumnTypeName(i))
                    .key("class").value(md.getColumnClassName(i))
                    .key("precision").value(md.getPrecision(i))
                    .key("scale").value(md.getScale(i))
                    .key("nullable").value(md.isNullable(i)).end();
        }
        json.end();
    }

    private static void resultSet(Json json, ResultSet rs) throws SQLException {
        ResultSetMetaData md = rs.getMetaData();
        json.key("columns");
        columns(json, md);
        json.key("rows").arr();
        int n = md.getColumnCount();
        int count = 0;
        while (rs.next() && count++ < MAX_ROWS) {
            json.arr();
            for (int i = 1; i <= n; i++) {
                Object v;
                String getObjectError = null;
                try {
                    v = rs.getObject(i);
                } catch (RuntimeException | SQLException e) {
                    // flight-sql-jdbc-driver 18.3.0 cannot getObject(int) a TIMESTAMP_WITH_TIMEZONE
                    // (apache/arrow-java#839); getTimestamp works, so read that and say so.
                    if (md.getColumnType(i) != Types.TIMESTAMP_WITH_TIMEZONE) {
                        throw e;
                    }
                    getObjectError = describe(e);
                    v = rs.getTimestamp(i);
                }
                if (v == null || rs.wasNull()) {
                    json.value((String) null);
                } else {
                    json.obj().key("c").value(v.getClass().getName()).key("v").value(exact(v))
                            .key("s").value(rs.getString(i));
                    if (getObjectError != null) {
                        json.key("getObject_error").value(getObjectError);
                    }
                    int type = md.getColumnType(i);
                    if (type == Types.TIMESTAMP || type == Types.TIMESTAMP_WITH_TIMEZONE) {
                        // The JDBC 4.2 way: an OffsetDateTime is an instant whatever the JVM's zone.
                        try {
                            OffsetDateTime odt = rs.getObject(i, OffsetDateTime.class);
                            json.key("odt").value(odt == null ? null : odt.toInstant().toString());
                        } catch (RuntimeException | SQLException e) {
                            json.key("odt_error").value(describe(e));
                        }
                    }
                    json.end();
                }
            }
            json.end();
        }
        json.end();
    }

    private static String exact(Object v) {
        if (v instanceof BigDecimal) {
            return ((BigDecimal) v).toPlainString();
        }
        if (v instanceof Timestamp) {
            return ((Timestamp) v).toInstant().toString();
        }
        if (v instanceof OffsetDateTime) {
            return ((OffsetDateTime) v).toInstant().toString();
        }
        if (v instanceof byte[]) {
            StringBuilder sb = new StringBuilder();
            for (byte b : (byte[]) v) {
                sb.append(String.format("%02x", b));
            }
            return sb.toString();
        }
        if (v instanceof Object[]) {
            return java.util.Arrays.deepToString((Object[]) v);
        }
        return v.toString();  // Double.toString, Date as yyyy-mm-dd, Boolean, Long, String ...
    }

    /** A minimal streaming JSON writer: enough for objects, arrays, strings, numbers, booleans. */
    static final class Json {
        private final StringBuilder sb = new StringBuilder();
        private final List<Boolean> first = new ArrayList<>();
        private final List<Character> closers = new ArrayList<>();
        private boolean afterKey;

        private void comma() {
            if (afterKey) {
                afterKey = false;
                return;
            }
            int top = first.size() - 1;
            if (top >= 0) {
                if (!first.get(top)) {
                    sb.append(',');
                }
                first.set(top, false);
            }
        }

        Json obj() { comma(); sb.append('{'); first.add(true); closers.add('}'); return this; }
        Json arr() { comma(); sb.append('['); first.add(true); closers.add(']'); return this; }

        Json end() {
            sb.append(closers.remove(closers.size() - 1));
            first.remove(first.size() - 1);
            return this;
        }

        Json key(String k) { comma(); string(k); sb.append(':'); afterKey = true; return this; }

        Json value(String s) {
            comma();
            if (s == null) {
                sb.append("null");
            } else {
                string(s);
            }
            return this;
        }

        Json value(boolean b) { comma(); sb.append(b); return this; }
        Json value(long n) { comma(); sb.append(n); return this; }

        /** A scalar from a DatabaseMetaData or Connection method: kept as its JSON kind. */
        Json scalar(Object v) {
            if (v == null) {
                return value((String) null);
            }
            if (v instanceof Boolean) {
                return value((Boolean) v);
            }
            if (v instanceof Integer || v instanceof Long || v instanceof Short) {
                return value(((Number) v).longValue());
            }
            return value(v.toString());
        }

        private void string(String s) {
            sb.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                switch (c) {
                    case '"': sb.append("\\\""); break;
                    case '\\': sb.append("\\\\"); break;
                    case '\n': sb.append("\\n"); break;
                    case '\r': sb.append("\\r"); break;
                    case '\t': sb.append("\\t"); break;
                    default:
                        if (c < 0x20) {
                            sb.append(String.format("\\u%04x", (int) c));
                        } else {
                            sb.append(c);  // UTF-16 surrogate pairs pass through as UTF-8 on output
                        }
                }
            }
            sb.append('"');
        }

        @Override
        public String toString() {
            return sb.toString();
        }
    }
}
