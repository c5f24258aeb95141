package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/ppsync/ppsync/node"
	"github.com/ppsync/ppsync/node/api"
)

// The relay commands: one relay process serves many families.

func relayCommand() *command {
	return &command{
		name:    "relay",
		summary: "serve several families from one relay process: join, list and remove families",
		sub:     []*command{relayJoinCommand(), relayFamiliesCommand(), relayRemoveFamilyCommand()},
	}
}

func relayJoinCommand() *command {
	var data, familyFile, site string
	var asJSON bool
	return &command{
		name:     "relay join",
		synopsis: "--data R --family FAMILY_JSON [--site NAME] [--json]",
		summary:  "prepare relay R to serve one more family: writes the join request for its support",
		detail: `R is a relay's data directory (set up with ` + "`ppsync init --role relay`" + ` for its first
family). This writes R/join-request-<FAMILY_ID>.json for the family of FAMILY_JSON; that
family's support admits it (` + "`ppsync family admit`" + `) and ` + "`ppsync install --data R CERT`" + `
adds the family, whether the relay runs or not. The relay keeps one identity (one node key,
one port, one database) for all its families. --site names the relay in the new family
(default: its name in its first family).`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			fs.StringVar(&familyFile, "family", "", "the `FAMILY_JSON` of the family to join")
			fs.StringVar(&site, "site", "", "the relay's site `NAME` in that family")
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
				return err
			}
			dir, err := c.dataDir(cmd, data)
			if err != nil {
				return err
			}
			if familyFile == "" {
				return usageErrorf(cmd.name, "needs --family FAMILY_JSON (the family.json of the family to join)")
			}
			res, err := node.RelayJoin(dir, familyFile, site, c.getenv, c.now)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSONLine(c.stdout, res)
			}
			fmt.Fprintf(c.stdout, "join request for family %s (%s) written to %s\n", res.Name, short(res.FamilyID), res.JoinRequest)
			fmt.Fprintf(c.stdout, "send it to that family's support; install the certificate they return with: ppsync install --data %s CERT\n", dir)
			return nil
		},
	}
}

func relayFamiliesCommand() *command {
	var data string
	var asJSON bool
	return &command{
		name:     "relay families",
		synopsis: "--data R [--json]",
		summary:  "list the families relay R serves: sites, frontiers, backlog, bytes stored, last contact",
		detail: `Needs the relay running. With --json prints one JSON array of
{"family_id","name","sites","frontier","backlog","bytes_stored","last_contact",...}.`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			res, err := askNode(c, cmd, &data, args, (*api.Client).Families)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSONLine(c.stdout, res.Families)
			}
			tw := newTable(c.stdout)
			fmt.Fprintln(tw, "FAMILY ID\tNAME\tSTATE\tSITES\tCONNECTED\tBACKLOG\tSTORED\tLAST CONTACT\tFRONTIER")
			for _, f := range res.Families {
				last := "never"
				if f.LastContact != nil {
					last = f.LastContact.Local().Format("2006-01-02 15:04:05")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", f.FamilyID, f.Name, f.State, strings.Join(f.Sites, ","),
					f.Peers, f.Backlog, bytesText(f.BytesStored), last, frontierText(f.Frontier))
			}
			return tw.Flush()
		},
	}
}

func relayRemoveFamilyCommand() *command {
	var data string
	var asJSON bool
	return &command{
		name:     "relay remove-family",
		synopsis: "--data R FAMILY_ID [--json]",
		summary:  "stop serving a family and erase its data from relay R (running or not)",
		detail: `The family's logs are erased from this relay's database and its directory
R/families/FAMILY_ID is removed. Its sites keep their data and sync through their other
relays (give them another relay's address first, see the README). The family this relay
was set up for cannot be removed this way: its data directory is the relay's own.`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			pos, err := c.parseArgs(cmd, newFlagSet(cmd), args, 1, 1, "FAMILY_ID")
			if err != nil {
				return err
			}
			dir, err := c.dataDir(cmd, data)
			if err != nil {
				return err
			}
			var res api.RemoveFamilyResult
			cl, err := api.NewClient(dir)
			switch {
			case err == nil:
				defer cl.Close()
				if res, err = cl.RemoveFamily(c.ctx, pos[0]); err != nil {
					return apiError(dir, err)
				}
			case errors.Is(err, api.ErrNotRunning):
				if res, err = node.RemoveFamilyOffline(dir, pos[0]); err != nil {
					return err
				}
			default:
				return err
			}
			if asJSON {
				return writeJSONLine(c.stdout, res)
			}
			fmt.Fprintf(c.stdout, "removed family %s (%s) and erased its data\n", res.Name, res.FamilyID)
			return nil
		},
	}
}

// bytesText writes a size for people.
func bytesText(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
