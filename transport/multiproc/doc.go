// Package multiproc holds only tests: several OS processes (the test binary
// re-executing itself) rendezvous over an embedded NATS server and exchange
// data over the real transports, including a process that dies mid-job.
package multiproc
