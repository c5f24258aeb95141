package engine

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/ppsync/ppsync/internal/wire"
)

// allActions lists one value of every action kind the engine has.
var allActions = []Action{
	Fetch{Peer: "a", Reason: ReasonGap},
	ForkCheck{Peer: "a", Site: "x", Seq: 3},
	CheckDuplicate{Peer: "a"},
	Append{Peer: "a", Run: []*wire.Signed{{}}},
	SpreadFork{Site: "x", Seq: 3},
	PushBranch{Site: "x", From: 1},
	Probe{Peer: "a"},
	SetTimer{At: time.Unix(5, 0)},
	WriteGate{Open: true},
}

// recordFx writes down each effect by its action's type.
type recordFx struct{ got []string }

func (r *recordFx) Fetch(Fetch)         { r.got = append(r.got, "Fetch") }
func (r *recordFx) ForkCheck(ForkCheck) { r.got = append(r.got, "ForkCheck") }
func (r *recordFx) CheckDuplicate(CheckDuplicate) {
	r.got = append(r.got, "CheckDuplicate")
}
func (r *recordFx) Append(Append) Outcome { r.got = append(r.got, "Append"); return Outcome{} }
func (r *recordFx) SpreadFork(SpreadFork) { r.got = append(r.got, "SpreadFork") }
func (r *recordFx) PushBranch(PushBranch) { r.got = append(r.got, "PushBranch") }
func (r *recordFx) Probe(Probe)           { r.got = append(r.got, "Probe") }
func (r *recordFx) SetTimer(SetTimer)     { r.got = append(r.got, "SetTimer") }
func (r *recordFx) WriteGate(WriteGate)   { r.got = append(r.got, "WriteGate") }

// TestDriveDispatchesEveryAction: Drive carries out every action kind through
// its own Effects method, feeds an append's outcome back as Appended, and
// panics on an action it does not know.
func TestDriveDispatchesEveryAction(t *testing.T) {
	var inputs []Input
	step := func(in Input) []Action {
		inputs = append(inputs, in)
		if _, ok := in.(Tick); ok {
			return allActions
		}
		return nil
	}
	fx := &recordFx{}
	Drive(step, fx, Tick{Now: time.Unix(1, 0)})
	var want []string
	for _, a := range allActions {
		want = append(want, reflect.TypeOf(a).Name())
	}
	if !reflect.DeepEqual(fx.got, want) {
		t.Fatalf("effects %v, want %v", fx.got, want)
	}
	if len(inputs) != 2 {
		t.Fatalf("inputs %v, want the tick and the append's outcome", inputs)
	}
	if ap, ok := inputs[1].(Appended); !ok || !ap.Now.Equal(time.Unix(1, 0)) || ap.Append.Peer != "a" {
		t.Fatalf("second input %#v, want Appended from a at the tick's time", inputs[1])
	}

	defer func() {
		if r := recover(); r == nil || fmt.Sprint(r) != "engine: Drive cannot carry out engine.unknownAction" {
			t.Fatalf("an unknown action: recovered %v, want Drive's panic", r)
		}
	}()
	Drive(func(Input) []Action { return []Action{unknownAction{}} }, fx, Tick{})
}

type unknownAction struct{}

func (unknownAction) action() {}
