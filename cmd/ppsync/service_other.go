//go:build !linux

package main

import (
	"context"
	"fmt"
	"runtime"

	"github.com/kardianos/service"
)

// kardianos/service installs a Windows service or a launchd daemon.
func platformService(s serviceSpec) (service.Service, error) {
	cfg := &service.Config{Name: s.Name, DisplayName: s.DisplayName, Description: s.Description,
		Executable: s.Executable, Arguments: s.Args}
	if runtime.GOOS == "darwin" {
		// launchd runs the daemon as the account that set the node up. A
		// Windows service would need that account's password: the service
		// is installed as LocalSystem, and its Log On account is changed
		// to the node's (README: running as a service).
		cfg.UserName = s.User
	}
	svc, err := service.New(noopProgram{}, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoServiceManager, err)
	}
	return svc, nil
}

// noopProgram satisfies the library for control actions; the service itself
// runs `ppsync run`.
type noopProgram struct{}

func (noopProgram) Start(service.Service) error { return nil }
func (noopProgram) Stop(service.Service) error  { return nil }

func serviceInstall(s serviceSpec) error {
	if err := makeLogDir(s.DataDir); err != nil {
		return err
	}
	svc, err := platformService(s)
	if err != nil {
		return err
	}
	if err := svc.Install(); err != nil {
		return fmt.Errorf("install the service %s (administrator rights needed): %w", s.Name, err)
	}
	return nil
}

func serviceControl(s serviceSpec, action string) error {
	svc, err := platformService(s)
	if err != nil {
		return err
	}
	if err := service.Control(svc, action); err != nil {
		return fmt.Errorf("%s the service %s: %w", action, s.Name, err)
	}
	return nil
}

// runService runs the node. Started by the Windows service manager (not
// interactive), it answers the manager's start and stop requests.
func runService(ctx context.Context, run func(context.Context) error) error {
	if service.Interactive() {
		return run(ctx)
	}
	p := &scmProgram{run: run, parent: ctx, done: make(chan error, 1)}
	svc, err := service.New(p, &service.Config{Name: "ppsync"})
	if err != nil {
		return run(ctx)
	}
	if err := svc.Run(); err != nil {
		return err
	}
	return p.err
}

type scmProgram struct {
	run    func(context.Context) error
	parent context.Context
	cancel context.CancelFunc
	done   chan error
	err    error
}

func (p *scmProgram) Start(service.Service) error {
	ctx, cancel := context.WithCancel(p.parent)
	p.cancel = cancel
	go func() { p.done <- p.run(ctx) }()
	return nil
}

func (p *scmProgram) Stop(service.Service) error {
	p.cancel()
	p.err = <-p.done
	return nil
}

// dirOwner is not known here: a node set up by an older ppsync, without its
// account in node.json, is installed as the service manager's default.
func dirOwner(string) string { return "" }
