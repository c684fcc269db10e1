// Package experiments holds slimgrad's studies and long measurements: tests
// behind the build tag experiments that train models, sweep settings, or
// start processes and time them. Each one either asserts its result or
// prints a table. Without the tag the package is empty, so `go test ./...`
// does not run them; README.md in this directory says how to.
package experiments
