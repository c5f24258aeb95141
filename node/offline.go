package node

import (
	"fmt"
	"strings"
	"time"

	"github.com/ppsync/ppsync/mesh"
	"github.com/ppsync/ppsync/node/api"
)

// bootstrapStatus reports each bootstrap address the node was given.
func (n *Node) bootstrapStatus() []api.BootstrapJSON {
	out := []api.BootstrapJSON{}
	for _, b := range n.mesh.Bootstrap() {
		bj := api.BootstrapJSON{Addr: b.Addr, PeerID: b.PeerID.String(), Site: b.Site, State: b.State, Detail: b.Detail}
		if !b.Since.IsZero() {
			t := b.Since.UTC()
			bj.Since = &t
		}
		out = append(out, bj)
	}
	return out
}

// offlineReason says, in the words of what the user did, why no member is
// connected and what to do about it.
func offlineReason(now time.Time, relay bool, peers []mesh.PeerInfo, boot []api.BootstrapJSON) string {
	if relay && len(boot) == 0 {
		if len(peers) == 0 {
			return "no site has joined this relay yet: sites connect to it once support gave them its address"
		}
		return "no site is connected to this relay right now: sites connect to it when they run"
	}
	for _, b := range boot {
		if b.State == mesh.CandidateNotMember {
			return fmt.Sprintf("the bootstrap address %s is not a member of this family (%s): check the relay address support gave you (family.json, --bootstrap or bootstrap in ppsync.toml)", b.Addr, b.Detail)
		}
	}
	var lost time.Time
	for _, p := range peers {
		if p.Lost.After(lost) {
			lost = p.Lost
		}
	}
	var unreachable []string
	for _, b := range boot {
		if b.State == mesh.CandidateUnreachable {
			unreachable = append(unreachable, fmt.Sprintf("%s (%s)", b.Addr, b.Detail))
		}
	}
	switch {
	case !lost.IsZero() && now.Sub(lost) < 10*time.Minute:
		return fmt.Sprintf("lost contact with every family member at %s (no heartbeat or answer): check this machine's network connection; ppsync keeps trying", lost.Local().Format("15:04:05"))
	case len(unreachable) > 0 && len(peers) == 0:
		return "cannot reach the relay at " + strings.Join(unreachable, "; ") + ": check this machine's internet connection and firewall, and that the address matches the one support gave you"
	case len(unreachable) > 0:
		return "no family member is reachable: cannot reach the relay at " + strings.Join(unreachable, "; ") + ": check this machine's internet connection and firewall"
	case len(peers) == 0 && len(boot) == 0:
		return "no relay address is set and no other member is known: ask support for the relay's address (support adds it to family.json with `ppsync family bootstrap --add`), or run with --bootstrap ADDRESS"
	case len(peers) == 0:
		return "connecting to the relay to learn the family's members"
	}
	var why []string
	for _, p := range peers {
		if p.Unreachable != "" {
			why = append(why, p.Member.Site+": "+p.Unreachable)
		}
	}
	if len(why) > 0 {
		return "no family member is reachable (" + strings.Join(why, "; ") + "): check this machine's internet connection"
	}
	return "no family member is reachable yet (no internet, or the relay is unreachable): ppsync keeps trying"
}
