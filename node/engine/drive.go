package engine

import "fmt"

// Effects carries out the engine's actions: one method per action. Append
// is synchronous and returns what the log did, which Drive feeds back into
// the engine; the others may start work in the background and report back
// later as inputs of their own (FetchDone, Heartbeat, Wake).
type Effects interface {
	Fetch(Fetch)
	ForkCheck(ForkCheck)
	CheckDuplicate(CheckDuplicate)
	Append(Append) Outcome
	SpreadFork(SpreadFork)
	PushBranch(PushBranch)
	Probe(Probe)
	SetTimer(SetTimer)
	WriteGate(WriteGate)
}

// Drive steps in through step and carries out every action it returns, in
// order, through fx. An append's outcome goes back into step at once (as
// Appended, with in's time) and its actions are carried out before the rest:
// a drain follows the append that made it possible. An action Drive does not
// know panics: every action kind must be handled here.
func Drive(step func(Input) []Action, fx Effects, in Input) {
	for _, a := range step(in) {
		switch a := a.(type) {
		case Fetch:
			fx.Fetch(a)
		case ForkCheck:
			fx.ForkCheck(a)
		case CheckDuplicate:
			fx.CheckDuplicate(a)
		case Append:
			o := fx.Append(a)
			Drive(step, fx, Appended{Now: in.When(), Append: a, Outcome: o})
		case SpreadFork:
			fx.SpreadFork(a)
		case PushBranch:
			fx.PushBranch(a)
		case Probe:
			fx.Probe(a)
		case SetTimer:
			fx.SetTimer(a)
		case WriteGate:
			fx.WriteGate(a)
		default:
			panic(fmt.Sprintf("engine: Drive cannot carry out %T", a))
		}
	}
}
