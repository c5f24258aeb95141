//go:build linux

package fault

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// errWorkerClosed: the namespace worker has stopped.
var errWorkerClosed = errors.New("fault: namespace worker closed")

// nsWorker is one OS thread that lives in a network namespace. Whatever it
// runs creates its sockets in that namespace, and processes it starts are
// born there (a child inherits the namespace of the thread that forks it).
// The thread stays locked until the worker closes and then exits with its
// goroutine, so the namespace never leaks to other goroutines.
//
// An isolated worker first moves its thread into a new network namespace with
// only a loopback interface, which it brings up. A shared worker stays in the
// test's namespace; it exists so that processes are started from one
// long-lived thread in both modes (Pdeathsig is bound to the parent thread).
type nsWorker struct {
	isolated bool
	reqs     chan func()
	done     chan struct{}

	mu     sync.Mutex
	closed bool
}

// newWorker starts a worker; isolated asks for a namespace of its own.
func newWorker(isolated bool) (*nsWorker, error) {
	w := &nsWorker{isolated: isolated, reqs: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		defer close(w.done)
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if isolated {
			if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
				errc <- fmt.Errorf("fault: new network namespace: %w", err)
				return
			}
			if err := loopbackUp(); err != nil {
				errc <- fmt.Errorf("fault: bring up loopback in the new namespace: %w", err)
				return
			}
		}
		errc <- nil
		for f := range w.reqs {
			f()
		}
	}()
	if err := <-errc; err != nil {
		<-w.done
		return nil, err
	}
	return w, nil
}

// canIsolate reports whether this process may create network namespaces.
func canIsolate() error {
	w, err := newWorker(true)
	if err != nil {
		return err
	}
	w.close()
	return nil
}

// do runs f on the worker's thread and waits for it.
func (w *nsWorker) do(f func()) error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return errWorkerClosed
	}
	ran := make(chan struct{})
	w.reqs <- func() { defer close(ran); f() }
	w.mu.Unlock()
	<-ran
	return nil
}

// listen opens a TCP listener in the worker's namespace.
func (w *nsWorker) listen(addr string) (net.Listener, error) {
	var ln net.Listener
	var err error
	if werr := w.do(func() { ln, err = net.Listen("tcp", addr) }); werr != nil {
		return nil, werr
	}
	return ln, err
}

// dial connects to addr from the worker's namespace.
func (w *nsWorker) dial(addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	var err error
	if werr := w.do(func() { c, err = net.DialTimeout("tcp", addr, timeout) }); werr != nil {
		return nil, werr
	}
	return c, err
}

// start starts cmd in the worker's namespace. The child gets SIGKILL if the
// worker's thread dies (the test process ended without cleaning up).
func (w *nsWorker) start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	var err error
	if werr := w.do(func() { err = cmd.Start() }); werr != nil {
		return werr
	}
	return err
}

// run runs cmd in the worker's namespace with a timeout and returns its
// combined exit status (cmd's Stdout and Stderr are the caller's).
func (w *nsWorker) run(ctx context.Context, cmd *exec.Cmd) error {
	if err := w.start(cmd); err != nil {
		return err
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-waited
		return fmt.Errorf("fault: %s: %w", cmd.Path, ctx.Err())
	}
}

// close stops the worker; its thread exits and, when it is the last user, the
// namespace goes away.
func (w *nsWorker) close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.reqs)
	}
	w.mu.Unlock()
	<-w.done
}

// loopbackUp sets the IFF_UP flag of "lo" in the calling thread's namespace
// (which gives it 127.0.0.1), with the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: name[16], then a union whose first field is short flags
	copy(ifr[:], "lo")
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCGIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return e
	}
	flags := binary.NativeEndian.Uint16(ifr[16:18]) | syscall.IFF_UP
	binary.NativeEndian.PutUint16(ifr[16:18], flags)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return e
	}
	return nil
}
