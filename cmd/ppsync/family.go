package main

import (
	"flag"
	"fmt"
	"path/filepath"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/node/api"
)

// The `ppsync family` commands administer a family offline, in the
// authority directory that holds authority.key and family.json.

func familyCommand() *command {
	return &command{
		name:    "family",
		summary: "administer a sync family (the authority's offline commands)",
		sub: []*command{
			familyCreateCommand(), familyBootstrapCommand(), familyAdmitCommand(),
			familyMoveCommand(), familyRevokeCommand(), familyRotateKeyCommand(),
		},
	}
}

// familyResult is the --json output of the family commands.
type familyResult struct {
	FamilyID   string   `json:"family_id"`
	Name       string   `json:"name,omitempty"`
	Dir        string   `json:"dir"`
	FamilyFile string   `json:"family_file,omitempty"`
	KeyFile    string   `json:"authority_key,omitempty"`
	Bootstrap  []string `json:"bootstrap,omitempty"`
	Site       string   `json:"site,omitempty"`
	Role       string   `json:"role,omitempty"`
	PeerID     string   `json:"peer_id,omitempty"`
	Epoch      uint64   `json:"epoch,omitempty"`
	Out        string   `json:"out,omitempty"`
}

func familyCreateCommand() *command {
	var dir, name string
	var asJSON bool
	return &command{
		name:     "family create",
		synopsis: "--dir DIR --name NAME [--json]",
		summary:  "create a family: DIR/authority.key (secret) and DIR/family.json (public)",
		detail: `Writes a new authority key to DIR/authority.key (mode 0600: keep it secret and backed up;
whoever holds it decides who belongs to the family) and the public DIR/family.json that every
site's ` + "`ppsync init`" + ` needs. Refuses a directory that already holds a family.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&dir, "dir", "", "the authority directory `DIR` (created if needed)")
			fs.StringVar(&name, "name", "", "the family's `NAME` (the practice's name)")
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
				return err
			}
			if err := required(cmd, "dir", dir, "name", name); err != nil {
				return err
			}
			_, info, err := family.CreateFamily(dir, name, c.now())
			if err != nil {
				return err
			}
			res := familyResult{FamilyID: info.FamilyID, Name: info.Name, Dir: dir,
				FamilyFile: filepath.Join(dir, family.InfoFile), KeyFile: filepath.Join(dir, family.AuthorityKeyFile)}
			if asJSON {
				return writeJSONLine(c.stdout, res)
			}
			fmt.Fprintf(c.stdout, "Created family %q (ID %s).\n", info.Name, info.FamilyID)
			fmt.Fprintf(c.stdout, "  %s  secret: keep it safe and backed up\n", res.KeyFile)
			fmt.Fprintf(c.stdout, "  %s  public: every site's `ppsync init --family` needs it\n", res.FamilyFile)
			fmt.Fprintf(c.stdout, "Next: add the relay's address with `ppsync family bootstrap --dir %s --add MULTIADDR`.\n", dir)
			return nil
		},
	}
}

func familyBootstrapCommand() *command {
	var dir string
	var add listFlag
	var asJSON bool
	return &command{
		name:     "family bootstrap",
		synopsis: "--dir DIR --add MULTIADDR... [--json]",
		summary:  "add a bootstrap address (the relay) to DIR/family.json",
		detail: `Adds each --add address (a multiaddr ending in /p2p/PEER_ID, as the relay's runtime.json lists
them) to family.json; an address already listed is kept once. Without --add, prints the list.
Sites set up before the change keep their copy: give them the new family.json or use
` + "`ppsync run --bootstrap`" + `.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&dir, "dir", "", "the authority directory `DIR`")
			fs.Var(&add, "add", "a bootstrap `MULTIADDR` to add (repeatable)")
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
				return err
			}
			if err := required(cmd, "dir", dir); err != nil {
				return err
			}
			path := filepath.Join(dir, family.InfoFile)
			info, err := family.LoadInfo(path)
			if err != nil {
				return err
			}
			for _, a := range add {
				if err := info.AddBootstrap(a); err != nil {
					return err
				}
			}
			if len(add) > 0 {
				if err := family.SaveInfo(path, info); err != nil {
					return err
				}
			}
			res := familyResult{FamilyID: info.FamilyID, Name: info.Name, Dir: dir, FamilyFile: path, Bootstrap: info.Bootstrap}
			if asJSON {
				if res.Bootstrap == nil {
					res.Bootstrap = []string{}
				}
				return writeJSONLine(c.stdout, res)
			}
			if len(info.Bootstrap) == 0 {
				fmt.Fprintf(c.stdout, "%s lists no bootstrap addresses; add the relay's with --add MULTIADDR.\n", path)
				return nil
			}
			fmt.Fprintf(c.stdout, "Bootstrap addresses in %s:\n", path)
			for _, a := range info.Bootstrap {
				fmt.Fprintf(c.stdout, "  %s\n", a)
			}
			return nil
		},
	}
}

func familyAdmitCommand() *command {
	return issueCommand("family admit",
		"sign a member certificate (epoch 1) for a new site from its join request",
		`Signs the certificate of a new site from the join-request.json its `+"`ppsync init`"+` wrote, records
it in DIR/issued/, and writes it to CERT. Send CERT to the site; it installs it with
`+"`ppsync install --data DATA CERT`"+`. Refuses a site ID the family already has (re-home an existing
site with `+"`ppsync family move`"+`).`,
		func(a *family.Authority, dir string, req *family.JoinRequest, c *cli) (*family.Certificate, error) {
			return a.Admit(dir, req, c.now())
		})
}

func familyMoveCommand() *command {
	return issueCommand("family move",
		"re-issue an existing site's certificate for a new machine or data directory (epoch + 1)",
		`Signs a new certificate (the next epoch) for an existing site from the join request of its new
node (a new machine or data directory), records it and writes it to CERT. The new epoch
supersedes the old certificate: a node still running under it is refused from then on. This
is the unlock that support performs.`,
		func(a *family.Authority, dir string, req *family.JoinRequest, c *cli) (*family.Certificate, error) {
			return a.Move(dir, req, c.now())
		})
}

// issueCommand builds `family admit` and `family move`, which differ only
// in the authority call.
func issueCommand(name, summary, detail string, issue func(*family.Authority, string, *family.JoinRequest, *cli) (*family.Certificate, error)) *command {
	var dir, reqPath, out string
	var asJSON bool
	return &command{
		name:     name,
		synopsis: "--dir DIR --request REQ_JSON --out CERT [--json]",
		summary:  summary,
		detail:   detail,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&dir, "dir", "", "the authority directory `DIR`")
			fs.StringVar(&reqPath, "request", "", "the site's join request `REQ_JSON` (written by ppsync init)")
			fs.StringVar(&out, "out", "", "where to write the certificate `CERT`")
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
				return err
			}
			if err := required(cmd, "dir", dir, "request", reqPath, "out", out); err != nil {
				return err
			}
			auth, _, err := family.LoadAuthority(dir)
			if err != nil {
				return err
			}
			data, err := c.readSmallFile(reqPath, family.MaxFileBytes)
			if err != nil {
				return err
			}
			req, err := family.ParseJoinRequest(data)
			if err != nil {
				return fmt.Errorf("%s: %w", reqPath, err)
			}
			cert, err := issue(auth, dir, req, c)
			if err != nil {
				return err
			}
			certData, err := cert.Marshal()
			if err != nil {
				return err
			}
			if err := writeFileAtomic(out, certData, 0o644); err != nil {
				return fmt.Errorf("%w; the certificate is recorded in %s, copy it from there", err, filepath.Join(dir, "issued", cert.Site+".json"))
			}
			res := familyResult{FamilyID: cert.FamilyID, Dir: dir, Site: cert.Site, Role: string(cert.Role),
				PeerID: cert.PeerID.String(), Epoch: cert.Epoch, Out: out}
			if asJSON {
				return writeJSONLine(c.stdout, res)
			}
			fmt.Fprintf(c.stdout, "Signed the certificate of site %q (%s, epoch %d, peer %s) into %s.\n",
				cert.Site, cert.Role, cert.Epoch, cert.PeerID, out)
			fmt.Fprintf(c.stdout, "Next: send it to the site, which runs `ppsync install --data DATA %s`.\n", filepath.Base(out))
			return nil
		},
	}
}

func familyRevokeCommand() *command {
	var dir, site, out, reason string
	var asJSON bool
	return &command{
		name:     "family revoke",
		synopsis: "--dir DIR --site SITE --out FILE [--reason TEXT] [--json]",
		summary:  "write a revocation that removes a site from the family",
		detail: `Revokes every certificate issued so far to SITE, records the revocation and writes it to FILE.
Install FILE into any running member (` + "`ppsync install --data DATA FILE`" + `): it gossips it to
the family, and every member stops talking to the revoked site.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&dir, "dir", "", "the authority directory `DIR`")
			fs.StringVar(&site, "site", "", "the `SITE` ID to revoke")
			fs.StringVar(&out, "out", "", "where to write the revocation `FILE`")
			fs.StringVar(&reason, "reason", "", "why, in a few words (kept in the revocation)")
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			if _, err := c.parseArgs(cmd, newFlagSet(cmd), args, 0, 0, ""); err != nil {
				return err
			}
			if err := required(cmd, "dir", dir, "site", site, "out", out); err != nil {
				return err
			}
			auth, _, err := family.LoadAuthority(dir)
			if err != nil {
				return err
			}
			rev, err := auth.Revoke(dir, site, reason, c.now())
			if err != nil {
				return err
			}
			data, err := rev.Marshal()
			if err != nil {
				return err
			}
			if err := writeFileAtomic(out, data, 0o644); err != nil {
				return err
			}
			res := familyResult{FamilyID: rev.FamilyID, Dir: dir, Site: rev.Site, Epoch: rev.Epoch, Out: out}
			if asJSON {
				return writeJSONLine(c.stdout, res)
			}
			fmt.Fprintf(c.stdout, "Revoked site %q (every certificate up to epoch %d) into %s.\n", rev.Site, rev.Epoch, out)
			fmt.Fprintf(c.stdout, "Next: install it into a running member with `ppsync install --data DATA %s`.\n", filepath.Base(out))
			return nil
		},
	}
}

func familyRotateKeyCommand() *command {
	var data string
	var asJSON bool
	return &command{
		name:     "family rotate-key",
		synopsis: "--data DATA [--json]",
		summary:  "start a new data key epoch at a running site (entries written from now on use a new key)",
		detail: `The family's entries are end-to-end encrypted with data keys that only its sites hold (a relay
holds none). This makes a new key at the site whose data directory is DATA and gives it to every
current site; entries written from now on are sealed with it. Old keys stay, so old entries stay
readable. Revoking a site starts a new key epoch by itself; run this when you suspect a key leaked.`,
		flags: func(fs *flag.FlagSet) {
			dataFlag(fs, &data)
			jsonFlag(fs, &asJSON)
		},
		run: func(c *cli, cmd *command, args []string) error {
			ks, err := askNode(c, cmd, &data, args, (*api.Client).RotateKey)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSONLine(c.stdout, ks)
			}
			for _, k := range ks.Keys {
				if k.Sealing {
					fmt.Fprintf(c.stdout, "New data key %.12s… (epoch %d): entries written from now on are sealed with it.\n", k.ID, k.Epoch)
					fmt.Fprintf(c.stdout, "It is being given to every current site; %d key(s) known in all.\n", len(ks.Keys))
				}
			}
			return nil
		},
	}
}

// required checks that each named flag (name, value pairs) was given.
func required(cmd *command, pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i+1] == "" {
			return usageErrorf(cmd.name, "needs --%s", pairs[i])
		}
	}
	return nil
}
