//go:build !unix

package train

import "time"

// processCPU is 0 where getrusage is not available: Record.CPU stays 0.
func processCPU() time.Duration { return 0 }
