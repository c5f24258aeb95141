package node

import (
	"context"
	"net/http"
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
// Metrics snapshot of the domain API: the node keeps no metric state of its
// own beyond the counters.
type collector struct {
	n   metricsSource
	ctx context.Context // the scrape's: Collect is given none
}

// metricsSource is what the collector needs of the node.
type metricsSource interface {
	Metrics(ctx context.Context) (Metrics, error)
}

var (
	mEntries = prometheus.NewDesc("ppsync_entries_total",
		"Entries appended to this node's log, by origin (own, gossip, catch-up).", []string{"origin"}, nil)
	mCatchupBytes = prometheus.NewDesc("ppsync_catchup_received_bytes_total",
		"Compressed bytes received in catch-up sessions.", nil, nil)
	mCatchupSessions = prometheus.NewDesc("ppsync_catchup_sessions_total",
		"Catch-up sessions run, by result.", []string{"result"}, nil)
	mRejections = prometheus.NewDesc("ppsync_rejections_total",
		"Connections, streams and gossip messages refused, by reason.", []string{"reason"}, nil)
	mDropped = prometheus.NewDesc("ppsync_gossip_publish_dropped_total",
		"Own entries not gossiped, beyond the gossip budget or with the queue full (catch-up delivers them).", nil, nil)
	mPeers = prometheus.NewDesc("ppsync_peers_connected",
		"Family members connected now, by path (direct, relay).", []string{"via"}, nil)
	mBacklog = prometheus.NewDesc("ppsync_backlog_entries",
		"Own entries no other member is known to hold.", nil, nil)
	mLag = prometheus.NewDesc("ppsync_peer_lag_entries",
		"Entries this node holds that a member does not, by member site.", []string{"site"}, nil)
	mFrontier = prometheus.NewDesc("ppsync_frontier_seq",
		"Highest contiguous seq held, by site.", []string{"site"}, nil)
	mConflicts = prometheus.NewDesc("ppsync_conflicts",
		"Concurrent writes recorded (conflicts).", nil, nil)
	mRecords = prometheus.NewDesc("ppsync_records",
		"Live records in the state.", nil, nil)
	mForks = prometheus.NewDesc("ppsync_forks",
		"Sites known to have forked.", nil, nil)
	mHeld = prometheus.NewDesc("ppsync_held_entries",
		"Entries waiting for a newer ppsync (newer schema).", nil, nil)
	mLastSync = prometheus.NewDesc("ppsync_last_sync_age_seconds",
		"Seconds since the last successful catch-up session (-1: never).", nil, nil)
	mVersionMismatch = prometheus.NewDesc("ppsync_version_mismatch",
		"1 when members run different ppsync versions.", nil, nil)
	mOnline = prometheus.NewDesc("ppsync_online",
		"1 when at least one family member is reachable.", nil, nil)
	mDiskSync = prometheus.NewDesc("ppsync_disk_sync_seconds",
		"Time each sync of the log to disk took (one sync makes every commit group waiting for it durable; a slow disk slows every write).", nil, nil)
	mDiskSynced = prometheus.NewDesc("ppsync_disk_synced_entries_total",
		"Entries the log's syncs made durable (divided by ppsync_disk_sync_seconds_count: entries per sync).", nil, nil)

	// The practice database, only on a node that syncs one.
	mDBCaptured = prometheus.NewDesc("ppsync_db_captured_total",
		"Changes captured from the practice database into this site's log since the node started.", nil, nil)
	mDBApplied = prometheus.NewDesc("ppsync_db_applied_total",
		"Merged rows written into the practice database since the node started.", nil, nil)
	mDBPendingCapture = prometheus.NewDesc("ppsync_db_pending_capture",
		"Changes waiting in the practice database's change table to be captured.", nil, nil)
	mDBPendingApply = prometheus.NewDesc("ppsync_db_pending_apply",
		"Merged changes not yet written into the practice database.", nil, nil)
	mDBRefused = prometheus.NewDesc("ppsync_db_refused_rows",
		"Merged rows the practice database refused (tried again after every change until written).", nil, nil)
	mDBProblem = prometheus.NewDesc("ppsync_db_problem",
		"1 when syncing the practice database has a problem (GET /v1/db says which).", nil, nil)

	// The alert monitor.
	mAlertRules = prometheus.NewDesc("ppsync_alert_rules",
		"Alert rules this node watches.", nil, nil)
	mAlertsFiring = prometheus.NewDesc("ppsync_alerts_firing",
		"Alert rules whose site has a problem that was told and has not recovered.", nil, nil)
	mAlertMessages = prometheus.NewDesc("ppsync_alert_messages_total",
		"Alert messages (per channel) sent, and attempts that failed (each is retried).", []string{"result"}, nil)
	mAlertPending = prometheus.NewDesc("ppsync_alert_messages_pending",
		"Alert messages (per channel) not delivered yet.", nil, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mEntries, mCatchupBytes, mCatchupSessions, mRejections, mDropped, mPeers,
		mBacklog, mLag, mFrontier, mConflicts, mRecords, mForks, mHeld, mLastSync, mVersionMismatch, mOnline,
		mDiskSync, mDiskSynced,
		mDBCaptured, mDBApplied, mDBPendingCapture, mDBPendingApply, mDBRefused, mDBProblem,
		mAlertRules, mAlertsFiring, mAlertMessages, mAlertPending} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	m, err := c.n.Metrics(c.ctx)
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	k := m.Counters
	counter(mEntries, k.Committed, "own")
	counter(mEntries, k.ReceivedGossip, "gossip")
	counter(mEntries, k.ReceivedCatchUp, "catch-up")
	counter(mCatchupBytes, k.CatchupBytes)
	counter(mCatchupSessions, k.CatchupOK, "ok")
	counter(mCatchupSessions, k.CatchupFailed, "failed")
	counter(mDropped, k.PublishDropped)
	disk := m.Disk
	buckets := make(map[float64]uint64, len(disk.Buckets))
	var below uint64
	for i, bound := range txlog.SyncBucketBounds() {
		below += disk.Buckets[i]
		buckets[bound.Seconds()] = below // cumulative, as Prometheus counts
	}
	ch <- prometheus.MustNewConstHistogram(mDiskSync, disk.Syncs, disk.Time.Seconds(), buckets)
	counter(mDiskSynced, disk.Entries)
	for reason, v := range m.Rejections {
		counter(mRejections, v, reason)
	}
	if d := m.DB; d != nil {
		counter(mDBCaptured, d.Captured)
		counter(mDBApplied, d.Applied)
		gauge(mDBPendingCapture, float64(d.PendingCapture))
		gauge(mDBPendingApply, float64(d.PendingApply))
		gauge(mDBRefused, float64(len(d.Refused)))
		gauge(mDBProblem, b2f(d.Problem != ""))
	}
	as := m.Alerts
	gauge(mAlertRules, float64(as.Rules))
	gauge(mAlertsFiring, float64(as.Firing))
	counter(mAlertMessages, as.Sent, "sent")
	counter(mAlertMessages, as.Failed, "failed")
	gauge(mAlertPending, float64(as.Pending))
	if err != nil {
		return // no status: the figures above only
	}
	st := m.Status
	via := map[string]float64{"direct": 0, "relay": 0}
	for _, p := range m.Peers {
		if p.Connected {
			via[p.Via]++
		}
		gauge(mLag, float64(p.Lag), p.Site)
	}
	for v, x := range via {
		gauge(mPeers, x, v)
	}
	for site, seq := range st.Frontier {
		gauge(mFrontier, float64(seq), site)
	}
	gauge(mBacklog, float64(st.Pending))
	gauge(mConflicts, float64(st.Conflicts))
	gauge(mRecords, float64(st.Records))
	gauge(mForks, float64(len(st.Forks)))
	gauge(mHeld, float64(st.Held))
	age := -1.0
	if st.LastSync != nil {
		age = m.Time.Sub(*st.LastSync).Seconds()
	}
	gauge(mLastSync, age)
	gauge(mVersionMismatch, b2f(st.VersionMismatch))
	gauge(mOnline, b2f(st.Online))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricsHandler serves GET /metrics from a registry of this node's own (no
// global registry: several nodes may share a process).
func (n *Node) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	// The process's own figures (go_goroutines, process_resident_memory_bytes,
	// process_open_fds, process_cpu_seconds_total): what a vendor watches on
	// a relay serving many families.
	reg.MustRegister(collector{n: n, ctx: n.ctx}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Timeout: 10 * time.Second})
}
