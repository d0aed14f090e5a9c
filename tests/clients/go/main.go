// meshgate-go-client: the Apache Arrow Go Flight SQL client against a meshgate gateway, for
// tests/test_go_client.py.
//
//	meshgate-go-client -addr 127.0.0.1:PORT [-user U -password P] -query SQL \
//	    [-prepared SQL -param VALUE] [-tables-schema PATTERN]
//
// It logs in (Basic handshake for a bearer token) when -user is given, then runs the statement
// (GetFlightInfo + DoGet on every endpoint), the prepared statement with its one parameter bound
// (CreatePreparedStatement, DoPut, GetFlightInfo, DoGet), GetSqlInfo, GetDbSchemas and GetTables
// with table schemas, and prints one JSON document. Values are printed exactly: integers as
// numbers, doubles, decimals and timestamps (UTC, RFC 3339 with nanoseconds) as text.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/flight/flightsql"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

type result struct {
	Columns []column `json:"columns"`
	Rows    [][]any  `json:"rows"`
}

type column struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	Nullable bool   `json:"nullable"`
}

type table struct {
	Catalog string   `json:"catalog"`
	Schema  string   `json:"schema"`
	Name    string   `json:"name"`
	Type    string   `json:"type"`
	Columns []column `json:"columns"`
}

type output struct {
	Query           *result           `json:"query"`
	Prepared        *result           `json:"prepared,omitempty"`
	ParameterSchema []column          `json:"parameter_schema,omitempty"`
	SqlInfo         map[string]string `json:"sql_info"`
	DbSchemas       [][]string        `json:"db_schemas"`
	Tables          []table           `json:"tables"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:32010", "gateway host:port")
	user := flag.String("user", "", "user name (Basic handshake for a bearer token)")
	password := flag.String("password", "", "password")
	query := flag.String("query", "", "statement to run")
	prepared := flag.String("prepared", "", "statement to prepare, with one ? parameter")
	param := flag.String("param", "", "the parameter's value, converted to its announced type")
	tablesSchema := flag.String("tables-schema", "%", "db_schema_filter_pattern for GetTables")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline for everything")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *addr, *user, *password, *query, *prepared, *param, *tablesSchema); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, addr, user, password, query, prepared, param, tablesSchema string) error {
	client, err := flightsql.NewClient(addr, nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer client.Close()
	if user != "" {
		if ctx, err = client.Client.AuthenticateBasicToken(ctx, user, password); err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
	}
	var out output

	info, err := client.Execute(ctx, query)
	if err != nil {
		return fmt.Errorf("execute: %w", err)
	}
	if out.Query, err = fetch(ctx, client, info); err != nil {
		return fmt.Errorf("fetch query: %w", err)
	}

	if prepared != "" {
		if out.Prepared, out.ParameterSchema, err = runPrepared(ctx, client, prepared, param); err != nil {
			return fmt.Errorf("prepared: %w", err)
		}
	}

	names := []flightsql.SqlInfo{flightsql.SqlInfoFlightSqlServerName, flightsql.SqlInfoFlightSqlServerVersion,
		flightsql.SqlInfoFlightSqlServerReadOnly}
	if info, err = client.GetSqlInfo(ctx, names); err != nil {
		return fmt.Errorf("GetSqlInfo: %w", err)
	}
	sqlInfo, err := fetch(ctx, client, info)
	if err != nil {
		return fmt.Errorf("fetch GetSqlInfo: %w", err)
	}
	out.SqlInfo = map[string]string{}
	for _, row := range sqlInfo.Rows {
		out.SqlInfo[fmt.Sprint(row[0])] = fmt.Sprint(row[1])
	}

	if info, err = client.GetDBSchemas(ctx, &flightsql.GetDBSchemasOpts{}); err != nil {
		return fmt.Errorf("GetDbSchemas: %w", err)
	}
	schemas, err := fetch(ctx, client, info)
	if err != nil {
		return fmt.Errorf("fetch GetDbSchemas: %w", err)
	}
	out.DbSchemas = [][]string{}
	for _, row := range schemas.Rows {
		out.DbSchemas = append(out.DbSchemas, []string{fmt.Sprint(row[0]), fmt.Sprint(row[1])})
	}

	if out.Tables, err = getTables(ctx, client, tablesSchema); err != nil {
		return err
	}
	encoder := json.NewEncoder(os.Stdout)
	encoder.SetEscapeHTML(false)
	return encoder.Encode(out)
}

func runPrepared(ctx context.Context, client *flightsql.Client, sql, param string) (*result, []column, error) {
	stmt, err := client.Prepare(ctx, sql)
	if err != nil {
		return nil, nil, err
	}
	defer stmt.Close(ctx)
	params := stmt.ParameterSchema()
	if params == nil || len(params.Fields()) != 1 {
		return nil, nil, fmt.Errorf("expected one parameter, the server announced %v", params)
	}
	builder := array.NewRecordBuilder(memory.DefaultAllocator, params)
	defer builder.Release()
	if err := appendText(builder.Field(0), param); err != nil {
		return nil, nil, err
	}
	binding := builder.NewRecordBatch()
	defer binding.Release()
	stmt.SetParameters(binding)
	info, err := stmt.Execute(ctx)
	if err != nil {
		return nil, nil, err
	}
	rows, err := fetch(ctx, client, info)
	return rows, columns(params), err
}

// appendText appends the parameter given as text in the type the server announced for it.
func appendText(b array.Builder, text string) error {
	switch b := b.(type) {
	case *array.Int64Builder:
		v, err := strconv.ParseInt(text, 10, 64)
		b.Append(v)
		return err
	case *array.Int32Builder:
		v, err := strconv.ParseInt(text, 10, 32)
		b.Append(int32(v))
		return err
	case *array.StringBuilder:
		b.Append(text)
		return nil
	default:
		return fmt.Errorf("no conversion of %q to %T", text, b)
	}
}

func getTables(ctx context.Context, client *flightsql.Client, schemaPattern string) ([]table, error) {
	info, err := client.GetTables(ctx, &flightsql.GetTablesOpts{DbSchemaFilterPattern: &schemaPattern, IncludeSchema: true})
	if err != nil {
		return nil, fmt.Errorf("GetTables: %w", err)
	}
	reader, err := client.DoGet(ctx, info.Endpoint[0].Ticket)
	if err != nil {
		return nil, fmt.Errorf("GetTables DoGet: %w", err)
	}
	defer reader.Release()
	tables := []table{}
	for reader.Next() {
		rec := reader.RecordBatch()
		catalogs := rec.Column(0).(*array.String)
		schemas := rec.Column(1).(*array.String)
		names := rec.Column(2).(*array.String)
		types := rec.Column(3).(*array.String)
		schemaBytes := rec.Column(4).(*array.Binary)
		for i := 0; i < int(rec.NumRows()); i++ {
			schema, err := flight.DeserializeSchema(schemaBytes.Value(i), memory.DefaultAllocator)
			if err != nil {
				return nil, fmt.Errorf("table_schema of %s: %w", names.Value(i), err)
			}
			tables = append(tables, table{catalogs.Value(i), schemas.Value(i), names.Value(i), types.Value(i), columns(schema)})
		}
	}
	return tables, reader.Err()
}

func columns(schema *arrow.Schema) []column {
	out := []column{}
	for _, f := range schema.Fields() {
		out = append(out, column{f.Name, f.Type.String(), f.Nullable})
	}
	return out
}

// fetch reads every endpoint of info.
func fetch(ctx context.Context, client *flightsql.Client, info *flight.FlightInfo) (*result, error) {
	res := &result{Rows: [][]any{}}
	for _, endpoint := range info.Endpoint {
		reader, err := client.DoGet(ctx, endpoint.Ticket)
		if err != nil {
			return nil, err
		}
		if res.Columns == nil {
			res.Columns = columns(reader.Schema())
		}
		for reader.Next() {
			rec := reader.RecordBatch()
			for i := 0; i < int(rec.NumRows()); i++ {
				row := make([]any, rec.NumCols())
				for j, col := range rec.Columns() {
					row[j] = value(col, i)
				}
				res.Rows = append(res.Rows, row)
			}
		}
		err = reader.Err()
		reader.Release()
		if err != nil {
			return nil, err
		}
	}
	return res, nil
}

func value(col arrow.Array, i int) any {
	if col.IsNull(i) {
		return nil
	}
	switch c := col.(type) {
	case *array.Int64:
		return c.Value(i)
	case *array.Int32:
		return c.Value(i)
	case *array.Int16:
		return c.Value(i)
	case *array.Int8:
		return c.Value(i)
	case *array.Float64:
		return strconv.FormatFloat(c.Value(i), 'g', -1, 64)
	case *array.Boolean:
		return c.Value(i)
	case *array.String:
		return c.Value(i)
	case *array.LargeString:
		return c.Value(i)
	case *array.Decimal128:
		return c.Value(i).ToString(c.DataType().(*arrow.Decimal128Type).Scale)
	case *array.Date32:
		return c.Value(i).ToTime().Format("2006-01-02")
	case *array.Timestamp:
		unit := c.DataType().(*arrow.TimestampType).Unit
		return c.Value(i).ToTime(unit).UTC().Format(time.RFC3339Nano)
	case *array.DenseUnion:
		return value(c.Field(c.ChildID(i)), int(c.ValueOffset(i)))
	case *array.SparseUnion:
		return value(c.Field(c.ChildID(i)), i)
	default:
		return col.ValueStr(i)
	}
}
