package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/ppsync/ppsync/node/api"
)

// Data commands: put, delete, get, list, digest (import is in import.go).

// txLine is what put and delete print: {"site":"...","seq":N}.
type txLine struct {
	Site string `json:"site"`
	Seq  uint64 `json:"seq"`
}

func putCommand() *command {
	var data string
	return &command{
		name:     "put",
		synopsis: "--data DATA TABLE KEY JSON_OBJECT",
		summary:  `commit one transaction that puts fields into a record; prints {"site":"...","seq":N}`,
		detail: `Sets the fields of JSON_OBJECT on record KEY of TABLE (other fields are kept) in one
transaction, durable before the command answers. Example:
  ppsync put --data DATA patients p1 '{"name":"Ada","dob":"1815-12-10"}'`,
		flags: func(fs *flag.FlagSet) { dataFlag(fs, &data) },
		run: func(c *cli, cmd *command, args []string) error {
			dir, pos, err := c.recordArgs(cmd, &data, args, "TABLE KEY JSON_OBJECT")
			if err != nil {
				return err
			}
			fields, err := parseFields(pos[2])
			if err != nil {
				return err
			}
			return c.transact(dir, api.OpJSON{Op: "put", Table: pos[0], Key: pos[1], Fields: fields})
		},
	}
}

func deleteCommand() *command {
	var data string
	return &command{
		name:     "delete",
		synopsis: "--data DATA TABLE KEY",
		summary:  `commit one transaction that deletes a record; prints {"site":"...","seq":N}`,
		flags:    func(fs *flag.FlagSet) { dataFlag(fs, &data) },
		run: func(c *cli, cmd *command, args []string) error {
			dir, pos, err := c.recordArgs(cmd, &data, args, "TABLE KEY")
			if err != nil {
				return err
			}
			return c.transact(dir, api.OpJSON{Op: "delete", Table: pos[0], Key: pos[1]})
		},
	}
}

// transact commits one operation and prints {"site":"...","seq":N}.
func (c *cli) transact(dir string, op api.OpJSON) error {
	cl, err := c.client(dir)
	if err != nil {
		return err
	}
	defer cl.Close()
	res, err := cl.Transact(c.ctx, api.TxRequest{Ops: []api.OpJSON{op}})
	if err != nil {
		return apiError(dir, err)
	}
	return writeJSONLine(c.stdout, txLine{Site: res.Site, Seq: res.Seq})
}

// recordArgs reads the arguments of a command on one record (TABLE KEY and
// perhaps more, as names lists them) and its data directory, and refuses
// empty names before anything is sent.
func (c *cli) recordArgs(cmd *command, data *string, args []string, names string) (dir string, pos []string, err error) {
	n := len(strings.Fields(names))
	if pos, err = c.parseArgs(cmd, newFlagSet(cmd), args, n, n, names); err != nil {
		return "", nil, err
	}
	if dir, err = c.dataDir(cmd, *data); err != nil { // data is set by parsing the flags
		return "", nil, err
	}
	return dir, pos, checkTableKey(cmd, pos[0], pos[1])
}

// checkTableKey refuses empty names before anything is sent.
func checkTableKey(cmd *command, table, key string) error {
	if table == "" {
		return usageErrorf(cmd.name, "TABLE is empty")
	}
	if key == "" {
		return usageErrorf(cmd.name, "KEY is empty")
	}
	return nil
}

const fieldsExample = `the fields must be a JSON object like '{"name":"Ada"}'`

// parseFields parses put's JSON_OBJECT, keeping numbers as written.
func parseFields(s string) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, &exitCodeError{code: exitError, msg: fmt.Sprintf("JSON_OBJECT is not valid JSON (%s); %s", jsonProblem(err), fieldsExample)}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &exitCodeError{code: exitError, msg: "JSON_OBJECT has more after the object; " + fieldsExample}
	}
	fields, ok := v.(map[string]any)
	if !ok {
		return nil, &exitCodeError{code: exitError, msg: fmt.Sprintf("JSON_OBJECT is %s; %s", jsonKind(v), fieldsExample)}
	}
	return fields, nil
}

// jsonProblem describes a JSON decoding error briefly.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("%v at byte %d", syn, syn.Offset)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "it ends too early"
	}
	return err.Error()
}

// jsonKind names the kind of a decoded JSON value.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number, float64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func getCommand() *command {
	var data string
	return &command{
		name:     "get",
		synopsis: "--data DATA TABLE KEY",
		summary:  "print a record's fields as a JSON object; exit 1 if absent",
		flags:    func(fs *flag.FlagSet) { dataFlag(fs, &data) },
		run: func(c *cli, cmd *command, args []string) error {
			dir, pos, err := c.recordArgs(cmd, &data, args, "TABLE KEY")
			if err != nil {
				return err
			}
			cl, err := c.client(dir)
			if err != nil {
				return err
			}
			defer cl.Close()
			rec, err := cl.Get(c.ctx, pos[0], pos[1])
			if errors.Is(err, api.ErrNotFound) {
				return &exitCodeError{code: exitError, msg: fmt.Sprintf("no record %s in table %s", pos[1], pos[0])}
			}
			if err != nil {
				return apiError(dir, err)
			}
			if rec.Fields == nil {
				rec.Fields = map[string]any{}
			}
			return writeJSONLine(c.stdout, rec.Fields)
		},
	}
}

// listLine is one line of `ppsync list`.
type listLine struct {
	Key    string         `json:"key"`
	Fields map[string]any `json:"fields"`
}

func listCommand() *command {
	var data string
	return &command{
		name:     "list",
		synopsis: "--data DATA TABLE",
		summary:  `print every record of a table, one {"key":K,"fields":{...}} per line, in key order`,
		flags:    func(fs *flag.FlagSet) { dataFlag(fs, &data) },
		run: func(c *cli, cmd *command, args []string) error {
			pos, err := c.parseArgs(cmd, newFlagSet(cmd), args, 1, 1, "TABLE")
			if err != nil {
				return err
			}
			dir, err := c.dataDir(cmd, data)
			if err != nil {
				return err
			}
			if pos[0] == "" {
				return usageErrorf(cmd.name, "TABLE is empty")
			}
			cl, err := c.client(dir)
			if err != nil {
				return err
			}
			defer cl.Close()
			w := bufio.NewWriterSize(c.stdout, 64<<10)
			after := ""
			for {
				page, err := cl.List(c.ctx, pos[0], after, 0)
				if err != nil {
					w.Flush()
					return apiError(dir, err)
				}
				for _, r := range page.Records {
					if r.Fields == nil {
						r.Fields = map[string]any{}
					}
					if err := writeJSONLine(w, listLine{Key: r.Key, Fields: r.Fields}); err != nil {
						return err
					}
				}
				if page.Next == nil || len(page.Records) == 0 {
					break
				}
				after = *page.Next
			}
			if err := w.Flush(); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
			return nil
		},
	}
}

func digestCommand() *command {
	var data string
	return &command{
		name:     "digest",
		synopsis: "--data DATA",
		summary:  "print a hex digest of the whole state (equal on nodes holding the same entries)",
		flags:    func(fs *flag.FlagSet) { dataFlag(fs, &data) },
		run: func(c *cli, cmd *command, args []string) error {
			d, err := askNode(c, cmd, &data, args, (*api.Client).Digest)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, d)
			return nil
		},
	}
}
