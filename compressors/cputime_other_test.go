//go:build !linux

package compressors

import "time"

func threadCPU() (time.Duration, bool) { return 0, false }
