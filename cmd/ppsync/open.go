package main

import (
	"flag"
	"fmt"
	"os/exec"
	"runtime"

	"github.com/ppsync/ppsync/node/api"
)

// openBrowser starts the system's browser on url without waiting for it;
// tests replace it.
var openBrowser = func(url string) error {
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", url)
	case "darwin":
		cmd = exec.Command("open", url)
	default:
		cmd = exec.Command("xdg-open", url)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

func openCommand() *command {
	var data string
	var browser, asJSON bool
	return &command{
		name:     "open",
		synopsis: "--data DATA [--browser] [--json]",
		summary:  "print a one-time link to the node's sync page (a local web dashboard)",
		detail: `Asks the running node for a link to its sync page and prints it. The link logs the browser in
without the API key: it works once, within 2 minutes, and gives a session that ends after 12 hours
unused or when the node restarts. Open it on this computer (the page only answers this machine when
the API is on 127.0.0.1). With --browser the command also opens it in the default browser; nodes
usually run without a screen, so it does not by default. --json prints {"url","expires"}.`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			fs.BoolVar(&browser, "browser", false, "also open the link in this computer's browser")
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			link, err := askNode(c, cmd, &data, args, (*api.Client).LoginLink)
			if err != nil {
				return err
			}
			if asJSON {
				if err := writeJSONLine(c.stdout, link); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(c.stdout, "Open the sync page with this link within 2 minutes (it works once):\n%s\n", link.URL)
			}
			if browser {
				if err := openBrowser(link.URL); err != nil {
					fmt.Fprintf(c.stderr, "could not start a browser (%v): open the link yourself\n", err)
				}
			}
			return nil
		},
	}
}
