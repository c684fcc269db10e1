package nats

import (
	"fmt"
	"log/slog"
	"regexp"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

// Defaults.
const (
	DefaultWindow         = 64 << 20
	DefaultHeartbeat      = time.Second
	DefaultPeerTimeout    = 10 * time.Second
	DefaultConnectTimeout = 30 * time.Second
	DefaultSubjectPrefix  = "slimgrad"
)

// Config holds a Conn's settings; see the With… options for each field.
type Config struct {
	// Token is presented to the server (nats.Token).
	Token string
	// CredsFile is a NATS credentials file (nats.UserCredentials).
	CredsFile string
	// NATSOptions are passed to nats.Connect after the ones derived from
	// this Config (Dial and NewGroup only). Dial disables reconnection, as
	// any break of the connection fails every peer (see the package doc).
	NATSOptions []natsgo.Option
	// SubjectPrefix is the first subject token; subjects are
	// <prefix>.<job>.{d,c}.<dst>.<src> and <prefix>.<job>.h.<src>.
	SubjectPrefix string
	// Window bounds the unreceived bytes (plus 64 per message) a receiver
	// holds from one sender; the sender blocks beyond it (credit-based flow
	// control), except that a message of any size may go while at most a
	// quarter window is outstanding (the receiver returns credit per
	// quarter window consumed, not per message). A sender assumes its peers use its own Window (it is not
	// exchanged): every rank of a job must set the same value, or a rank
	// with a smaller one fails its peers for exceeding their credit.
	Window int64
	// MaxFrame is the largest message accepted, on Send and on receipt
	// (transport.ErrTooLarge), checked before anything is allocated. Like
	// Window it must be the same on every rank: a message that a larger
	// MaxFrame lets through fails the link on a receiver with a smaller one.
	MaxFrame int
	// ChunkSize is the largest NATS message this Conn publishes; 0 means
	// the server's max payload. Messages are split into chunks of at most
	// this size (frame header included).
	ChunkSize int
	// Heartbeat is how often a Conn tells its peers it is alive.
	Heartbeat time.Duration
	// PeerTimeout is how long a peer may stay silent (no heartbeat, no
	// data) before it is declared dead.
	PeerTimeout time.Duration
	// ConnectTimeout bounds Dial/New when ctx has no earlier deadline: the
	// connection and the wait until every peer is heard from.
	ConnectTimeout time.Duration
	// DisconnectSubject is where the server announces connections that
	// ended (natsserver.DisconnectSubject, the default; "" turns it off). A
	// rank that Dial connected is named in them, so its peers fail it as
	// soon as its connection ends (its process died) instead of after
	// PeerTimeout. A server that does not publish them (an external
	// server without the export natsserver sets up) leaves the heartbeats.
	// With Key, on a connection that authenticated with a shared token or
	// not at all (anyone may then publish a notice), a notice is believed
	// only if the peer it names then stays silent for a quarter of
	// PeerTimeout (at least two heartbeats): a forged notice does not fail
	// a live peer that is heard from within that time, and a dead one is
	// failed that long after its death instead of PeerTimeout.
	DisconnectSubject string
	// Key, when set, is the job's secret: every message a Conn publishes is
	// authenticated with a key derived from it for the sending rank, and
	// messages that fail authentication or repeat an earlier one are
	// dropped (counted in Drops, logged) without any other effect. Every
	// rank of a job must have the same Key; at least MinKeyLen bytes. nil
	// leaves messages unauthenticated (anyone who may publish on the
	// job's subjects can then fail its links).
	Key []byte
	// Logger receives a line for dropped messages (the 1st, 2nd, 4th...
	// of each kind); nil logs nothing.
	Logger *slog.Logger
	// Server configures the embedded server NewGroup starts.
	Server natsserver.Options
}

// Permissions returns the subjects rank of a job of size ranks publishes
// and subscribes to with the default subject prefix and disconnect subject:
// what a NATS user for that rank alone needs (natsserver.User, or the
// permissions of an external server's user). A rank so restricted cannot
// publish as another rank, nor touch another job.
func Permissions(job string, rank int) (publish, subscribe []string) {
	base := DefaultSubjectPrefix + "." + job + "."
	publish = []string{
		fmt.Sprintf("%sd.*.%d", base, rank), // data and goodbyes to each peer
		fmt.Sprintf("%sc.*.%d", base, rank), // credit, aborts, acknowledgements
		fmt.Sprintf("%sh.%d", base, rank),   // hellos
		fmt.Sprintf("%sd.%d.*", base, rank), // gone markers, to itself
	}
	subscribe = []string{
		fmt.Sprintf("%sd.%d.*", base, rank),
		fmt.Sprintf("%sc.%d.*", base, rank),
		base + "h.*",
		natsserver.DisconnectSubject,
	}
	return publish, subscribe
}

// MinKeyLen is the shortest Config.Key accepted.
const MinKeyLen = 16

// Option changes a Config. Nil options are ignored.
type Option func(*Config) error

func defaultConfig() Config {
	return Config{
		SubjectPrefix:  DefaultSubjectPrefix,
		Window:         DefaultWindow,
		MaxFrame:       transport.DefaultMaxFrame,
		Heartbeat:      DefaultHeartbeat,
		PeerTimeout:    DefaultPeerTimeout,
		ConnectTimeout: DefaultConnectTimeout,

		DisconnectSubject: natsserver.DisconnectSubject,
	}
}

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func (c *Config) validate() error {
	switch {
	case !tokenRE.MatchString(c.SubjectPrefix):
		return fmt.Errorf("subject prefix %q: want letters, digits, '_' or '-'", c.SubjectPrefix)
	case c.Window <= 0:
		return fmt.Errorf("window %d must be positive", c.Window)
	case c.MaxFrame < 0 || int64(c.MaxFrame) > 1<<40:
		return fmt.Errorf("max frame %d out of range", c.MaxFrame)
	case c.ChunkSize != 0 && c.ChunkSize < minChunk:
		return fmt.Errorf("chunk size %d below %d", c.ChunkSize, minChunk)
	case c.Heartbeat <= 0 || c.PeerTimeout <= c.Heartbeat:
		return fmt.Errorf("heartbeat %v and peer timeout %v: want 0 < heartbeat < timeout", c.Heartbeat, c.PeerTimeout)
	case c.Key != nil && len(c.Key) < MinKeyLen:
		return fmt.Errorf("key of %d bytes: want at least %d", len(c.Key), MinKeyLen)
	case c.ConnectTimeout <= 0:
		return fmt.Errorf("connect timeout %v must be positive", c.ConnectTimeout)
	}
	return nil
}

// WithToken sets Config.Token (and the embedded server's token in NewGroup).
func WithToken(token string) Option {
	return func(c *Config) error { c.Token = token; c.Server.Token = token; return nil }
}

// WithKey sets Config.Key (a copy of key).
func WithKey(key []byte) Option {
	return func(c *Config) error { c.Key = append([]byte(nil), key...); return nil }
}

// WithLogger sets Config.Logger.
func WithLogger(l *slog.Logger) Option { return func(c *Config) error { c.Logger = l; return nil } }

// WithCredentials sets Config.CredsFile.
func WithCredentials(file string) Option {
	return func(c *Config) error { c.CredsFile = file; return nil }
}

// WithNATSOptions appends to Config.NATSOptions.
func WithNATSOptions(opts ...natsgo.Option) Option {
	return func(c *Config) error { c.NATSOptions = append(c.NATSOptions, opts...); return nil }
}

// WithSubjectPrefix sets Config.SubjectPrefix.
func WithSubjectPrefix(p string) Option {
	return func(c *Config) error { c.SubjectPrefix = p; return nil }
}

// WithWindow sets Config.Window (bytes).
func WithWindow(bytes int64) Option { return func(c *Config) error { c.Window = bytes; return nil } }

// WithMaxFrame sets Config.MaxFrame (bytes).
func WithMaxFrame(bytes int) Option { return func(c *Config) error { c.MaxFrame = bytes; return nil } }

// WithChunkSize sets Config.ChunkSize (bytes).
func WithChunkSize(bytes int) Option {
	return func(c *Config) error { c.ChunkSize = bytes; return nil }
}

// WithHeartbeat sets Config.Heartbeat and Config.PeerTimeout.
func WithHeartbeat(interval, peerTimeout time.Duration) Option {
	return func(c *Config) error { c.Heartbeat, c.PeerTimeout = interval, peerTimeout; return nil }
}

// WithDisconnectSubject sets Config.DisconnectSubject ("" turns the
// notices off).
func WithDisconnectSubject(subject string) Option {
	return func(c *Config) error { c.DisconnectSubject = subject; return nil }
}

// WithConnectTimeout sets Config.ConnectTimeout.
func WithConnectTimeout(d time.Duration) Option {
	return func(c *Config) error { c.ConnectTimeout = d; return nil }
}

// WithServer sets the options of the embedded server NewGroup starts (its
// Token is overridden by WithToken when both are given, whichever comes
// last).
func WithServer(o natsserver.Options) Option {
	return func(c *Config) error {
		tok := c.Server.Token
		c.Server = o
		if o.Token == "" {
			c.Server.Token = tok
		}
		return nil
	}
}
