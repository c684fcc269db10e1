package main

import (
	"slices"
	"strings"
	"testing"
)

func TestSplice(t *testing.T) {
	doc := "# x\n<!-- table: slimgrad sim --workers 2 -->\nold\nrows\n<!-- end table -->\nmid\n<!-- table: slimgrad sim -->\n<!-- end table -->\n"
	bl, err := findBlocks([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(bl) != 2 || !slices.Equal(bl[0].args, []string{"--workers", "2"}) || len(bl[1].args) != 0 {
		t.Fatalf("blocks %+v", bl)
	}
	got := string(splice([]byte(doc), bl, [][]byte{[]byte("| a |\n"), []byte("| b |\n")}))
	want := "# x\n<!-- table: slimgrad sim --workers 2 -->\n| a |\n<!-- end table -->\nmid\n<!-- table: slimgrad sim -->\n| b |\n<!-- end table -->\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	for _, bad := range []string{
		"<!-- table: slimgrad sim\n",
		"<!-- table: slimgrad sim -->\n",
		"<!-- end table -->\n",
		"<!-- table: slimgrad sim -->\n<!-- table: slimgrad sim -->\n",
	} {
		if _, err := findBlocks([]byte(bad)); err == nil || !strings.Contains(err.Error(), "line ") {
			t.Errorf("%q: err %v, want one naming the line", bad, err)
		}
	}
}
