// Package layering holds no code: its test checks the import rules of
// docs/design.md ("Packages follow the layers": codecs < error feedback < layer
// binding < drivers < scenarios < CLI, L-GreCo above codecs and error
// feedback with no transport, allreduce free of I/O) on the module's real
// dependency graph, as `go list -deps` reports it.
package layering
