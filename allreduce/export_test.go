package allreduce

// FusedScales is the number of FnScale ops e runs inside the FnReduce
// before them (Exec.fuse).
func FusedScales(e *Exec) int {
	k := 0
	for _, f := range e.fuse {
		if f < 0 {
			k++
		}
	}
	return k
}
