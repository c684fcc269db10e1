package worker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/transport/nats"
)

func TestStepOverNATS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded NATS server")
	}
	for _, alg := range []string{"ring", "tree"} {
		t.Run(fmt.Sprintf("alg=%s", alg), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			g, err := nats.NewGroup(ctx, 3)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { g.Close() })
			checkDenseOver(t, g.Conns(), alg)
		})
	}
}
