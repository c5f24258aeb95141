//go:build tools

package ppsync

import (
	_ "github.com/cockroachdb/pebble/v2"
	_ "github.com/hashicorp/go-msgpack/v2/codec"
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/libp2p/go-libp2p/core/peer"
)
