package main

import (
	"strconv"
	"strings"
	"testing"
)

func TestParseOptim(t *testing.T) {
	cases := []struct {
		recipe string
		steps  int
		flat   bool
		name   string // optimizer String() prefix
		err    string
	}{
		{"sgd:lr=0.5", 10, false, "sgd", ""},
		{"momentum", 10, false, "momentum", ""},
		{"nesterov:lr=0.1,m=0.8,wd=1e-4", 10, false, "", ""},
		{"dgcsgd:lr=0.1,m=0.9", 10, false, "", ""},
		{"adam:lr=0.001", 10, false, "adam", ""},
		{"onebitadam:freeze=20%", 1000, false, "", ""},
		{"onebitadam:freeze=20%,scale=model", 1000, true, "", ""},
		{"onebitadam:freeze=70,block=0,mask=0", 1000, false, "", ""},
		{"adam:lr=0.001,bias=false", 10, false, "adam", ""},
		// issue #21: an explicit freeze needs MinFreeze warm-up steps and a
		// compressed stage.
		{"onebitadam:freeze=10", 20, false, "", "at least 50 warm-up steps"},
		{"onebitadam:freeze=7", 1000, false, "", "at least 50 warm-up steps"},
		{"onebitadam:freeze=60", 60, false, "", "must be below the number of steps"},
		{"onebitadam:scale=layer", 1000, false, "", "want tensor"},
		{"onebitadam:block=12", 1000, false, "", "multiple of 8"},
		{"onebitadam:bias=true", 1000, false, "", "no bias correction"},
		{"onebitadam:mask=-1", 1000, false, "", "mask threshold must be >= 0 and finite, got -1"},
		{"adam:bias=maybe", 10, false, "", "not true or false"},
		// issue #21: ranges in words, not "want [0, 3.4028234663852886e+38]".
		{"momentum:lr=-1", 10, false, "", "lr must be >= 0 and finite, got -1"},
		{"adam:lr=-1", 10, false, "", "lr must be >= 0 and finite, got -1"},
		{"adam:beta1=2", 10, false, "", "unknown key"},
		{"rmsprop", 10, false, "", "unknown optimizer"},
		{"momentum:lr=fast", 10, false, "", "not a number"},
		{"momentum:beta=0.9", 10, false, "", "unknown key"},
		{"momentum:lr", 10, false, "", "not key=value"},
		{"onebitadam:freeze=0", 10, false, "", "step count"},
		{"onebitadam:freeze=120%", 10, false, "", "percentage"},
		{"momentum:m=1.5", 10, false, "", "momentum must be in [0, 1), got 1.5"},
	}
	for _, tc := range cases {
		spec, err := parseOptim(tc.recipe, tc.steps)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "3.4028234663852886e+38") {
				t.Errorf("%q: err %v, want %q", tc.recipe, err, tc.err)
			}
			continue
		}
		if err == nil {
			_, err = spec.New(16)
		}
		if err != nil {
			t.Errorf("%q: %v", tc.recipe, err)
			continue
		}
		if spec.Flat != tc.flat {
			t.Errorf("%q: flat %v", tc.recipe, spec.Flat)
		}
	}
}

func TestOneBitAdamFreezeFloor(t *testing.T) {
	for _, tc := range []struct{ steps, freeze int }{{1000, 200}, {100, 50}, {20, 20}} {
		spec, err := parseOptim("onebitadam:freeze=20%", tc.steps)
		if err != nil {
			t.Fatal(err)
		}
		o, err := spec.New(8)
		if err != nil {
			t.Fatal(err)
		}
		if want := "freeze_step=" + strconv.Itoa(tc.freeze) + ","; !strings.Contains(o.String(), want) {
			t.Errorf("%d steps: %s, want %s", tc.steps, o.String(), want)
		}
	}
}

func TestSelectMethods(t *testing.T) {
	o := defaultSimOptions()
	ms, err := selectMethods(o)
	if err != nil || len(ms) != 4 || ms[0].Name != "dense" || ms[1].Name != "dgc" || ms[2].Name != "onebitadam" || ms[3].Name != "econtrol" {
		t.Fatalf("default methods %v, %v", ms, err)
	}
	o.Compress, o.EF = "topk:0.01", "dgc:0.9"
	ms, _ = selectMethods(o)
	if len(ms) != 2 || ms[0].Name != "dense" || ms[1].Optim != "dgcsgd:lr=0.1,m=0.9" {
		t.Errorf("custom: %+v", ms)
	}
	if _, err := selectMethods(simOptions{Methods: ""}); err == nil {
		t.Error("no methods: no error")
	}
}
