package node

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ppsync/ppsync/txlog"
)

// counters are the node's monotonically increasing figures, kept as atomics
// and exported by the collector at scrape time.
type counters struct {
	committed       atomic.Uint64 // own entries committed
	receivedGossip  atomic.Uint64 // entries appended from gossip
	receivedCatchUp atomic.Uint64 // entries appended from catch-up
	catchupBytes    atomic.Uint64 // compressed catch-up bytes received
	catchupOK       atomic.Uint64 // catch-up sessions that succeeded
	catchupFailed   atomic.Uint64 // catch-up sessions that failed
	publishDropped  atomic.Uint64 // own entries not gossiped (over budget or queue full; catch-up delivers them)
	// entries from members refused after the mesh let them in
	rejectedSignature atomic.Uint64 // not signed by the key of their site and epoch
	rejectedChain     atomic.Uint64 // not linked to the previous entry of their site
	rejectedOther     atomic.Uint64 // another family, a fenced epoch, malformed
}

// collector computes every metric when Prometheus scrapes, from one
// Metrics snapshot of the domain API per family: the node keeps no metric
// state of its own beyond the counters. Without a family label it exports
// one family's figures (the node's); with one (GET /metrics?family=all at a
// relay) every family's, each labelled with its ID, and the number of
// families served.
type collector struct {
	families func() []familyMetrics // the families to export: one without a label
	labelled bool
	d        *metricDescs
	ctx      context.Context // the node's: Collect is given none
}

// familyMetrics is one family's source of figures.
type familyMetrics struct {
	id  string
	src metricsSource
}

// metricsSource is what the collector needs of the node.
type metricsSource interface {
	Metrics(ctx context.Context) (Metrics, error)
}

// metricDescs describes the metrics of one family; with a family label
// (family=all) each carries the family's ID first.
type metricDescs struct {
	entries, catchupBytes, catchupSessions, rejections, dropped    *prometheus.Desc
	peers, backlog, lag, frontier, conflicts, records, forks, held *prometheus.Desc
	lastSync, versionMismatch, online, diskSync, diskSynced        *prometheus.Desc
	dbCaptured, dbApplied, dbPendingCapture, dbPendingApply        *prometheus.Desc
	dbRefused, dbProblem                                           *prometheus.Desc
	alertRules, alertsFiring, alertMessages, alertPending          *prometheus.Desc
	families                                                       *prometheus.Desc // no family label: the families served (family=all only)
}

// newMetricDescs returns the descriptions; labelled adds the family label.
func newMetricDescs(labelled bool) *metricDescs {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		if labelled {
			labels = append([]string{"family"}, labels...)
		}
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &metricDescs{
		families: prometheus.NewDesc("ppsync_relay_families", "Families this process serves.", nil, nil),
		entries: desc("ppsync_entries_total",
			"Entries appended to this node's log, by origin (own, gossip, catch-up).", "origin"),
		catchupBytes: desc("ppsync_catchup_received_bytes_total",
			"Compressed bytes received in catch-up sessions."),
		catchupSessions: desc("ppsync_catchup_sessions_total",
			"Catch-up sessions run, by result.", "result"),
		rejections: desc("ppsync_rejections_total",
			"Connections, streams and gossip messages refused, by reason.", "reason"),
		dropped: desc("ppsync_gossip_publish_dropped_total",
			"Own entries not gossiped, beyond the gossip budget or with the queue full (catch-up delivers them)."),
		peers: desc("ppsync_peers_connected",
			"Family members connected now, by path (direct, relay).", "via"),
		backlog: desc("ppsync_backlog_entries",
			"Own entries no other member is known to hold."),
		lag: desc("ppsync_peer_lag_entries",
			"Entries this node holds that a member does not, by member site.", "site"),
		frontier: desc("ppsync_frontier_seq",
			"Highest contiguous seq held, by site.", "site"),
		conflicts: desc("ppsync_conflicts",
			"Concurrent writes recorded (conflicts)."),
		records: desc("ppsync_records",
			"Live records in the state."),
		forks: desc("ppsync_forks",
			"Sites known to have forked."),
		held: desc("ppsync_held_entries",
			"Entries waiting for a newer ppsync (newer schema)."),
		lastSync: desc("ppsync_last_sync_age_seconds",
			"Seconds since the last successful catch-up session (-1: never)."),
		versionMismatch: desc("ppsync_version_mismatch",
			"1 when members run different ppsync versions."),
		online: desc("ppsync_online",
			"1 when at least one family member is reachable."),
		diskSync: desc("ppsync_disk_sync_seconds",
			"Time each sync of the log to disk took (one sync makes every commit group waiting for it durable; a slow disk slows every write)."),
		diskSynced: desc("ppsync_disk_synced_entries_total",
			"Entries the log's syncs made durable (divided by ppsync_disk_sync_seconds_count: entries per sync)."),
		// The practice database, only on a node that syncs one.
		dbCaptured: desc("ppsync_db_captured_total",
			"Changes captured from the practice database into this site's log since the node started."),
		dbApplied: desc("ppsync_db_applied_total",
			"Merged rows written into the practice database since the node started."),
		dbPendingCapture: desc("ppsync_db_pending_capture",
			"Changes waiting in the practice database's change table to be captured."),
		dbPendingApply: desc("ppsync_db_pending_apply",
			"Merged changes not yet written into the practice database."),
		dbRefused: desc("ppsync_db_refused_rows",
			"Merged rows the practice database refused (tried again after every change until written)."),
		dbProblem: desc("ppsync_db_problem",
			"1 when syncing the practice database has a problem (GET /v1/db says which)."),
		// The alert monitor.
		alertRules: desc("ppsync_alert_rules",
			"Alert rules this node watches."),
		alertsFiring: desc("ppsync_alerts_firing",
			"Alert rules whose site has a problem that was told and has not recovered."),
		alertMessages: desc("ppsync_alert_messages_total",
			"Alert messages (per channel) sent, and attempts that failed (each is retried).", "result"),
		alertPending: desc("ppsync_alert_messages_pending",
			"Alert messages (per channel) not delivered yet."),
	}
}

// all returns every description of a family's figures, for Describe.
func (d *metricDescs) all() []*prometheus.Desc {
	return []*prometheus.Desc{
		d.entries, d.catchupBytes, d.catchupSessions, d.rejections, d.dropped,
		d.peers, d.backlog, d.lag, d.frontier, d.conflicts, d.records, d.forks, d.held,
		d.lastSync, d.versionMismatch, d.online, d.diskSync, d.diskSynced,
		d.dbCaptured, d.dbApplied, d.dbPendingCapture, d.dbPendingApply, d.dbRefused, d.dbProblem,
		d.alertRules, d.alertsFiring, d.alertMessages, d.alertPending,
	}
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.d.all() {
		ch <- d
	}
	if c.labelled {
		ch <- c.d.families
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	fams := c.families()
	if c.labelled {
		ch <- prometheus.MustNewConstMetric(c.d.families, prometheus.GaugeValue, float64(len(fams)))
	}
	for _, f := range fams {
		var label []string
		if c.labelled {
			label = []string{f.id}
		}
		c.collectFamily(ch, f.src, label)
	}
}

// collectFamily exports one family's figures, each with the label values
// fam first (nil: none).
func (c collector) collectFamily(ch chan<- prometheus.Metric, src metricsSource, fam []string) {
	d := c.d
	m, err := src.Metrics(c.ctx)
	labelled := func(labels []string) []string {
		if fam == nil {
			return labels
		}
		return append(slices.Clone(fam), labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labelled(labels)...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labelled(labels)...)
	}
	k := m.Counters
	counter(d.entries, k.Committed, "own")
	counter(d.entries, k.ReceivedGossip, "gossip")
	counter(d.entries, k.ReceivedCatchUp, "catch-up")
	counter(d.catchupBytes, k.CatchupBytes)
	counter(d.catchupSessions, k.CatchupOK, "ok")
	counter(d.catchupSessions, k.CatchupFailed, "failed")
	counter(d.dropped, k.PublishDropped)
	disk := m.Disk
	buckets := make(map[float64]uint64, len(disk.Buckets))
	var below uint64
	for i, bound := range txlog.SyncBucketBounds() {
		below += disk.Buckets[i]
		buckets[bound.Seconds()] = below // cumulative, as Prometheus counts
	}
	ch <- prometheus.MustNewConstHistogram(d.diskSync, disk.Syncs, disk.Time.Seconds(), buckets, labelled(nil)...)
	counter(d.diskSynced, disk.Entries)
	for reason, v := range m.Rejections {
		counter(d.rejections, v, reason)
	}
	if db := m.DB; db != nil {
		counter(d.dbCaptured, db.Captured)
		counter(d.dbApplied, db.Applied)
		gauge(d.dbPendingCapture, float64(db.PendingCapture))
		gauge(d.dbPendingApply, float64(db.PendingApply))
		gauge(d.dbRefused, float64(len(db.Refused)))
		gauge(d.dbProblem, b2f(db.Problem != ""))
	}
	as := m.Alerts
	gauge(d.alertRules, float64(as.Rules))
	gauge(d.alertsFiring, float64(as.Firing))
	counter(d.alertMessages, as.Sent, "sent")
	counter(d.alertMessages, as.Failed, "failed")
	gauge(d.alertPending, float64(as.Pending))
	if err != nil {
		return // no status: the figures above only
	}
	st := m.Status
	via := map[string]float64{"direct": 0, "relay": 0}
	for _, p := range m.Peers {
		if p.Connected {
			via[p.Via]++
		}
		gauge(d.lag, float64(p.Lag), p.Site)
	}
	for v, x := range via {
		gauge(d.peers, x, v)
	}
	for site, seq := range st.Frontier {
		gauge(d.frontier, float64(seq), site)
	}
	gauge(d.backlog, float64(st.Pending))
	gauge(d.conflicts, float64(st.Conflicts))
	gauge(d.records, float64(st.Records))
	gauge(d.forks, float64(len(st.Forks)))
	gauge(d.held, float64(st.Held))
	age := -1.0
	if st.LastSync != nil {
		age = m.Time.Sub(*st.LastSync).Seconds()
	}
	gauge(d.lastSync, age)
	gauge(d.versionMismatch, b2f(st.VersionMismatch))
	gauge(d.online, b2f(st.Online))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricsHandler serves GET /metrics from registries of this node's own (no
// global registry: several nodes may share a process): this family's
// figures; with ?family=all every family's this process serves, each
// labelled with its family ID (one scrape for a relay of many families).
// ?family=ID of another family never gets here: routeFamily hands it on.
func (n *Node) metricsHandler() http.Handler {
	one := metricsRegistry(collector{d: newMetricDescs(false), ctx: n.ctx,
		families: func() []familyMetrics { return []familyMetrics{{id: n.id.FamilyID, src: n}} }})
	all := metricsRegistry(collector{d: newMetricDescs(true), labelled: true, ctx: n.ctx, families: n.familyMetrics})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.TrimSpace(r.URL.Query().Get("family")) == "all" {
			all.ServeHTTP(w, r)
			return
		}
		one.ServeHTTP(w, r)
	})
}

// metricsRegistry returns the handler of a registry holding c and the
// process's own figures (go_goroutines, process_resident_memory_bytes,
// process_open_fds, process_cpu_seconds_total): what a vendor watches on a
// relay serving many families.
func metricsRegistry(c collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Timeout: 10 * time.Second})
}

// familyMetrics returns every family this process serves: this node's
// first, then a relay's further families by ID.
func (n *Node) familyMetrics() []familyMetrics {
	out := []familyMetrics{{id: n.id.FamilyID, src: n}}
	for _, m := range n.families() {
		out = append(out, familyMetrics{id: m.id.FamilyID, src: m})
	}
	return out
}
