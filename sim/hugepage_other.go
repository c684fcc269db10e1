//go:build !linux

package sim

// adviseHuge is a no-op where transparent huge pages do not exist.
func adviseHuge(b []byte) {}
