package node

import (
	"fmt"
	"strings"

	"github.com/ppsync/ppsync/family"
	"github.com/ppsync/ppsync/node/api"
)

// statusOf builds the status from an already computed list of peers (the
// metrics collector needs both and computes the peers once).
func (n *Node) statusOf(peers []api.PeerJSON) (api.Status, error) {
	s := api.Status{
		Site: n.id.Site, Role: string(n.id.Role), PeerID: n.id.PeerID, Version: n.cfg.Version,
		FamilyID: n.id.FamilyID, FamilyName: n.roster.Info().Name, Epoch: n.cert.Epoch,
		Frontier: n.txlog.Frontier(), Forks: []api.ForkJSON{}, StartedAt: n.start.UTC(),
		DataDir: n.cfg.DataDir, Warnings: []string{},
	}
	if ln := n.apiListener(); ln != nil {
		s.API = "http://" + ln.Addr().String()
	}
	s.Encryption = n.encryptionStatus()
	cfg := n.currentConfig()
	if n.id.Role == family.RoleSite { // own entries no other member is known to hold
		s.Pending = beyond(n.txlog.Head(n.id.Site).Seq, n.sync.mostHeld(n.id.Site))
	}
	versions := map[string][]string{}
	for _, p := range peers {
		if p.Connected {
			s.Peers++
		}
		if p.Version != "" && p.Version != n.cfg.Version {
			versions[p.Version] = append(versions[p.Version], p.Site)
		}
		if p.ClockSkew != "" {
			s.Warnings = append(s.Warnings, fmt.Sprintf("the clock of %s differs from this machine's by %s: check both machines' time settings", p.Site, p.ClockSkew))
		}
	}
	if len(versions) > 0 {
		s.VersionMismatch = true
		msg := fmt.Sprintf("systems are on different versions: this node runs %s", n.cfg.Version)
		for v, sites := range versions {
			msg += fmt.Sprintf("; %s run%s %s", strings.Join(sites, ", "), map[bool]string{true: "s", false: ""}[len(sites) == 1], v)
		}
		s.Warnings = append(s.Warnings, msg)
	}
	s.Bootstrap = n.bootstrapStatus()
	switch {
	case s.Peers > 0:
		s.Online = true
	case !cfg.ConnectivityCheck:
		s.Online, s.OfflineReason = true, "connectivity check is off: no family member is connected right now"
	default:
		s.OfflineReason = offlineReason(n.cfg.Now(), n.id.Role == family.RoleRelay, n.mesh.Peers(), s.Bootstrap)
	}
	if last := n.sync.lastSyncTime(); !last.IsZero() {
		t := last.UTC()
		s.LastSync = &t
	}
	s.SyncInterval = n.currentSettings().SyncInterval
	for _, f := range n.txlog.Forks() {
		s.Forks = append(s.Forks, api.ForkJSON{Site: f.Site, Seq: f.Seq, Held: f.Held.String(), Offered: f.Offered.String()})
	}
	for _, d := range n.sync.duplicates() {
		s.Warnings = append(s.Warnings, fmt.Sprintf("two copies of site %s are running at once (a copied data directory or a cloned machine): they split the practice's data; stop one and ask support", d))
	}
	if n.storage.over.Load() {
		s.Warnings = append(s.Warnings, fmt.Sprintf("this family is over its storage limit on this relay (family_max_mb = %d in [relay] of %s): the relay takes no new entries of it; raise the limit", n.currentConfig().Relay.MaxMB, ConfigFile))
	}
	for _, f := range s.Forks {
		s.Warnings = append(s.Warnings, fmt.Sprintf("fork: site %s wrote two different entries at seq %d (two copies of one site are writing); its later entries are quarantined until support resolves it", f.Site, f.Seq))
	}
	if n.id.Role == family.RoleSite {
		s.Writable = true
		if err := n.writeBlocked(); err != nil {
			s.Writable, s.WriteBlocked = false, err.Error()
		}
	} else {
		s.WriteBlocked = "relay: writes no transactions of its own"
	}
	st, err := n.state.Stats()
	if err != nil {
		return s, err
	}
	s.Records, s.Conflicts = st.Records, st.Conflicts
	if s.Held, err = n.txlog.Held(); err != nil {
		return s, err
	}
	switch waitingKey := s.Encryption.State == "waiting"; {
	case waitingKey && s.Held == 0:
		s.Warnings = append(s.Warnings, s.Encryption.Detail)
	case waitingKey:
		// They wait for the family's data key, not for an upgrade.
		s.Warnings = append(s.Warnings, fmt.Sprintf("waiting for the family's data key: %d entries sealed with it are held until a site gives this one the key (it asks every member; nothing is lost)", s.Held))
	case s.Held > 0:
		s.Warnings = append(s.Warnings, fmt.Sprintf("%d entries wait to be applied: they were written by a newer ppsync or a newer version of the practice software (schema version above this site's %d); they are applied once this site is upgraded, nothing is lost", s.Held, n.appVersion()))
	}
	return s, nil
}
