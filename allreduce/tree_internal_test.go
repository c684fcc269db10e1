package allreduce

import "testing"

// TestDoubleBinaryTree checks both trees for n = 1..600: parent and child
// links agree, every rank reaches the root, depth is O(log n), and few ranks
// are interior (have children) in both trees.
func TestDoubleBinaryTree(t *testing.T) {
	for n := 1; n <= 600; n++ {
		both := 0
		interior := make([]int, n)
		for tr := 0; tr < 2; tr++ {
			roots := 0
			for r := 0; r < n; r++ {
				p, c0, c1 := dtree(n, r, tr)
				if p < 0 {
					roots++
				} else {
					_, pc0, pc1 := dtree(n, p, tr)
					if pc0 != r && pc1 != r {
						t.Fatalf("n=%d tree %d: rank %d has parent %d, which has children %d, %d", n, tr, r, p, pc0, pc1)
					}
				}
				for _, c := range []int{c0, c1} {
					if c < 0 {
						continue
					}
					if c >= n || c == r {
						t.Fatalf("n=%d tree %d: rank %d has child %d", n, tr, r, c)
					}
					if cp, _, _ := dtree(n, c, tr); cp != r {
						t.Fatalf("n=%d tree %d: rank %d has child %d whose parent is %d", n, tr, r, c, cp)
					}
				}
				if c0 >= 0 || c1 >= 0 {
					interior[r]++
				}
				// depth: walk to the root
				depth, x := 0, r
				for x >= 0 {
					x, _, _ = dtree(n, x, tr)
					depth++
					if depth > 2*log2ceil(n)+2 {
						t.Fatalf("n=%d tree %d: rank %d is too deep (or in a cycle)", n, tr, r)
					}
				}
			}
			if roots != 1 {
				t.Fatalf("n=%d tree %d: %d roots", n, tr, roots)
			}
		}
		for _, k := range interior {
			if k == 2 {
				both++
			}
		}
		if n > 2 && both > 1 {
			t.Errorf("n=%d: %d ranks are interior in both trees", n, both)
		}
	}
}
