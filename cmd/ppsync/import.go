package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
	"github.com/ppsync/ppsync/node/api"
)

// Import limits. A chunk is one batch request; the node takes at most
// 10,000 transactions and 4 MiB per request. A longer line than
// importMaxLine cannot be a transaction (its entry may hold 512 KiB).
const (
	importChunkLines = 1000
	importChunkBytes = 2 << 20
	importMaxLine    = 2 << 20
	importProgress   = 2 * time.Second
)

// importResult is what `ppsync import` prints.
type importResult struct {
	Transactions int    `json:"transactions"`
	LastSeq      uint64 `json:"last_seq"`
}

func importCommand() *command {
	var data string
	var progress bool
	return &command{
		name:     "import",
		synopsis: "--data DATA FILE [--progress]",
		summary:  `commit one transaction per JSON line of FILE (- is stdin); prints {"transactions":N,"last_seq":N}`,
		detail: `Each line of FILE is one transaction:
  {"ops":[{"op":"put","table":T,"key":K,"fields":{...}},{"op":"delete","table":T,"key":K}]}
Blank lines are skipped. Lines are sent in batches of up to 1,000, each committed all or none,
while the next batch is read. On a malformed line the command stops and says which line is
wrong; every transaction before it was imported, so the import can be resumed from that line.
Progress is shown on stderr every 2 seconds when stderr is a terminal, or with --progress.`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			fs.BoolVar(&progress, "progress", false, "show progress on stderr even when it is not a terminal")
		},
		run: func(c *cli, cmd *command, args []string) error {
			pos, err := c.parseArgs(cmd, newFlagSet(cmd), args, 1, 1, "FILE")
			if err != nil {
				return err
			}
			dir, err := c.dataDir(cmd, data)
			if err != nil {
				return err
			}
			in := c.stdin
			name := "stdin"
			if pos[0] != "-" {
				f, err := os.Open(pos[0])
				if err != nil {
					return fmt.Errorf("cannot read %s: %w", pos[0], unwrapPathError(err))
				}
				defer f.Close()
				in, name = f, pos[0]
			}
			cl, err := c.client(dir)
			if err != nil {
				return err
			}
			defer cl.Close()
			imp := &importer{ctx: c.ctx, send: cl.BatchRaw, dir: dir, name: name, now: c.now}
			if progress || isTerminal(c.stderr) {
				imp.progress = c.stderr
			}
			res, err := imp.run(in)
			if err != nil {
				return err
			}
			return writeJSONLine(c.stdout, res)
		},
	}
}

// importer streams JSON lines into batch requests: it validates and
// collects the next chunk while the previous one is being committed (one
// request in flight at a time, so chunks commit in file order).
type importer struct {
	ctx      context.Context
	send     func(context.Context, []byte) (api.BatchResult, error)
	dir      string
	name     string // the input, for errors
	now      func() time.Time
	progress io.Writer // nil: no progress lines

	cur      importChunk
	inflight *importChunk
	done     int // transactions committed
	lastSeq  uint64
	long     []byte // a line longer than the read buffer

	started, lastReport time.Time
}

// importChunk is one batch request's lines.
type importChunk struct {
	buf         *bytes.Buffer // {"transactions":[line,line,...
	first, last int           // line numbers
	count       int
	lines       []int // line number of each transaction
	ends        []int // offset in buf just after each transaction
	result      chan importOutcome
}

type importOutcome struct {
	res api.BatchResult
	err error
}

const importHead = `{"transactions":[`

func (imp *importer) run(in io.Reader) (importResult, error) {
	imp.started = imp.now()
	imp.lastReport = imp.started
	imp.cur.buf = bytes.NewBufferString(importHead)
	r := bufio.NewReaderSize(in, 1<<20)
	lineNo := 0
	for {
		line, readErr := imp.readLine(r)
		if readErr != nil && readErr != io.EOF {
			return imp.stop(fmt.Errorf("cannot read %s at line %d: %v", imp.name, lineNo+1, readErr))
		}
		if len(line) > 0 || readErr == nil {
			lineNo++
		}
		if lineNo == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf")) // a byte-order mark, as Windows tools write
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
			if len(t) > importMaxLine {
				return imp.stop(fmt.Errorf("line %d is longer than %d MiB; one transaction may hold at most %d KiB", lineNo, importMaxLine>>20, wire.MaxEntryBytes>>10))
			}
			if err := checkImportLine(t); err != nil {
				return imp.stop(fmt.Errorf("line %d: %v", lineNo, err))
			}
			if imp.cur.buf.Len()+len(t) > importChunkBytes && imp.cur.count > 0 {
				if err := imp.flush(); err != nil {
					return imp.fail(err)
				}
			}
			imp.add(t, lineNo)
			if imp.cur.count >= importChunkLines {
				if err := imp.flush(); err != nil {
					return imp.fail(err)
				}
			}
		}
		if readErr == io.EOF {
			break
		}
	}
	if err := imp.flush(); err != nil {
		return imp.fail(err)
	}
	if err := imp.wait(); err != nil {
		return imp.fail(err)
	}
	imp.report(true)
	return importResult{Transactions: imp.done, LastSeq: imp.lastSeq}, nil
}

// readLine returns the next line (with its newline, if any); io.EOF comes
// with the last line when it has no newline. A line longer than the limit
// is returned cut just past the limit, which the caller refuses.
func (imp *importer) readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != bufio.ErrBufferFull {
		return line, err
	}
	imp.long = append(imp.long[:0], line...)
	for err == bufio.ErrBufferFull && len(imp.long) <= importMaxLine {
		line, err = r.ReadSlice('\n')
		imp.long = append(imp.long, line...)
	}
	if err == bufio.ErrBufferFull {
		err = nil
	}
	return imp.long, err
}

// add appends a validated line to the current chunk.
func (imp *importer) add(line []byte, lineNo int) {
	if imp.cur.count == 0 {
		imp.cur.first = lineNo
	} else {
		imp.cur.buf.WriteByte(',')
	}
	imp.cur.buf.Write(line)
	imp.cur.last = lineNo
	imp.cur.count++
	imp.cur.lines = append(imp.cur.lines, lineNo)
	imp.cur.ends = append(imp.cur.ends, imp.cur.buf.Len())
}

// flush sends the current chunk once the one in flight has committed.
func (imp *importer) flush() error {
	if imp.cur.count == 0 {
		return nil
	}
	if err := imp.wait(); err != nil {
		return err
	}
	ch := imp.cur
	ch.buf.WriteString("]}")
	ch.result = make(chan importOutcome, 1)
	imp.inflight = &ch
	go func() {
		res, err := imp.send(imp.ctx, ch.buf.Bytes())
		ch.result <- importOutcome{res, err}
	}()
	// A fresh buffer, never the one just sent: the HTTP transport may still
	// hold the request body when the answer arrives.
	imp.cur = importChunk{buf: bytes.NewBuffer(make([]byte, 0, ch.buf.Cap()))}
	imp.cur.buf.WriteString(importHead)
	return nil
}

// wait waits for the chunk in flight and counts it.
func (imp *importer) wait() error {
	ch := imp.inflight
	if ch == nil {
		return nil
	}
	out := <-ch.result
	imp.inflight = nil
	if out.err != nil {
		return &importChunkError{chunk: *ch, err: out.err}
	}
	imp.done += out.res.Transactions
	imp.lastSeq = out.res.LastSeq
	imp.report(false)
	return nil
}

// importChunkError is a chunk the node refused or did not answer for.
type importChunkError struct {
	chunk importChunk
	err   error
}

func (e *importChunkError) Error() string { return e.err.Error() }
func (e *importChunkError) Unwrap() error { return e.err }

// stop handles a problem found while reading: everything before it is sent
// and committed first, so the message can say exactly what was imported.
func (imp *importer) stop(problem error) (importResult, error) {
	if err := imp.flush(); err != nil {
		return imp.fail(err)
	}
	if err := imp.wait(); err != nil {
		return imp.fail(err)
	}
	return importResult{}, &exitCodeError{code: exitError, msg: fmt.Sprintf("%v; %s", problem, importedBefore(imp.done, "it"))}
}

// importedBefore says how many transactions were imported before a place.
func importedBefore(n int, place string) string {
	if n == 0 {
		return "nothing was imported"
	}
	if n == 1 {
		return "the 1 transaction before " + place + " was imported"
	}
	return fmt.Sprintf("the %d transactions before %s were imported", n, place)
}

// fail reports a chunk that did not commit (wait returned its error, so
// nothing is in flight) and says which lines were and were not imported.
// When the node names the transaction it refused ("transaction K: ..."),
// the transactions before it are sent again on their own, so that, as for a
// line refused before sending, everything before the bad line is imported.
func (imp *importer) fail(err error) (importResult, error) {
	var ce *importChunkError
	if !errors.As(err, &ce) {
		return importResult{}, err
	}
	ch := ce.chunk
	lines := fmt.Sprintf("lines %d-%d", ch.first, ch.last)
	if ch.first == ch.last {
		lines = fmt.Sprintf("line %d", ch.first)
	}
	before := importedBefore(imp.done, fmt.Sprintf("line %d", ch.first))
	if errors.Is(err, api.ErrNotRunning) {
		return importResult{}, &exitCodeError{code: exitNotRunning,
			msg: fmt.Sprintf("the node on %s stopped answering while importing %s (none of them was imported); %s; start it with `ppsync run --data %s` and resume from line %d",
				imp.dir, lines, before, imp.dir, ch.first)}
	}
	var se *api.APIStatusError
	if !errors.As(err, &se) {
		return importResult{}, &exitCodeError{code: exitError,
			msg: fmt.Sprintf("importing %s failed, and the node may or may not have committed them: %v; %s", lines, ce.err, before)}
	}
	k, problem, ok := refusedTransaction(se.Error())
	if !ok || k > ch.count || len(ch.lines) != ch.count {
		return importResult{}, &exitCodeError{code: exitError,
			msg: fmt.Sprintf("the node refused %s, so none of them was imported: %s; %s", lines, se.Error(), before)}
	}
	if k > 1 {
		body := append(append([]byte(nil), ch.buf.Bytes()[:ch.ends[k-2]]...), "]}"...)
		res, err := imp.send(imp.ctx, body)
		if err != nil {
			sub := importChunk{buf: bytes.NewBuffer(body), first: ch.first, last: ch.lines[k-2], count: k - 1,
				lines: ch.lines[:k-1], ends: ch.ends[:k-1]}
			return imp.fail(&importChunkError{chunk: sub, err: err})
		}
		imp.done += res.Transactions
		imp.lastSeq = res.LastSeq
	}
	return importResult{}, &exitCodeError{code: exitError,
		msg: fmt.Sprintf("line %d: the node refused it: %s; %s", ch.lines[k-1], problem, importedBefore(imp.done, "it"))}
}

// refusedTransaction parses the node's "transaction K: problem" (K counts
// from 1 within the batch).
func refusedTransaction(msg string) (k int, problem string, ok bool) {
	rest, found := strings.CutPrefix(msg, "transaction ")
	if !found {
		return 0, "", false
	}
	num, problem, found := strings.Cut(rest, ": ")
	k, err := strconv.Atoi(num)
	if !found || err != nil || k < 1 {
		return 0, "", false
	}
	return k, problem, true
}

// report prints a progress line every importProgress, and a final one.
func (imp *importer) report(final bool) {
	if imp.progress == nil {
		return
	}
	now := imp.now()
	if !final && now.Sub(imp.lastReport) < importProgress {
		return
	}
	imp.lastReport = now
	rate := 0.0
	if el := now.Sub(imp.started).Seconds(); el > 0 {
		rate = float64(imp.done) / el
	}
	verb := "imported"
	if final {
		verb = "done: imported"
	}
	fmt.Fprintf(imp.progress, "%s %d transactions (%.0f/s)\n", verb, imp.done, rate)
}
