//go:build !amd64 || noasm

package kernels

func allFinite(x []float32) bool                    { return allFiniteGeneric(x) }
func add(dst, src []float32)                        { addGeneric(dst, src) }
func addTo(dst, a, b []float32)                     { addToGeneric(dst, a, b) }
func subTo(dst, a, b []float32)                     { subToGeneric(dst, a, b) }
func scale(dst []float32, s float32)                { scaleGeneric(dst, s) }
func scaleTo(dst []float32, s float32, x []float32) { scaleToGeneric(dst, s, x) }
func axpy(dst []float32, a float32, x []float32)    { axpyGeneric(dst, a, x) }
func axpyTo(dst []float32, a float32, x, y []float32) {
	axpyToGeneric(dst, a, x, y)
}
func dot(a, b []float32) float64                        { return dotGeneric(a, b) }
func sumSq(x []float32) float64                         { return sumSqGeneric(x) }
func encodeFloat32(dst []byte, src []float32)           { encodeFloat32Generic(dst, src) }
func decodeFloat32(dst []float32, src []byte)           { decodeFloat32Generic(dst, src) }
func decodeAddFloat32(dst []float32, src []byte)        { decodeAddFloat32Generic(dst, src) }
func encodeFloat16(dst []byte, src []float32)           { encodeFloat16Generic(dst, src) }
func decodeFloat16(dst []float32, src []byte)           { decodeFloat16Generic(dst, src) }
func decodeAddFloat16(dst []float32, src []byte)        { decodeAddFloat16Generic(dst, src) }
func encodeBFloat16(dst []byte, src []float32)          { encodeBFloat16Generic(dst, src) }
func decodeBFloat16(dst []float32, src []byte)          { decodeBFloat16Generic(dst, src) }
func decodeAddBFloat16(dst []float32, src []byte)       { decodeAddBFloat16Generic(dst, src) }
func packSigns(dst []byte, src []float32)               { packSignsGeneric(dst, src) }
func unpackSigns(dst []float32, bits []byte, s float32) { unpackSignsGeneric(dst, bits, s) }
func unpackSignsAdd(dst []float32, bits []byte, s float32) {
	unpackSignsAddGeneric(dst, bits, s)
}

func nextAbsGE(x []float32, lo uint32) int { return nextAbsGEGeneric(x, lo) }

func qsgdNibbles(codes []byte, src []float32, sc float32, s uint32, g *Lanes) {
	qsgdNibblesGeneric(codes, src, sc, s, g)
}

func qsgdDecodeNibbles(dst []float32, codes []byte, levels *[8]float32, add bool) {
	qsgdDecodeNibblesGeneric(dst, codes, levels, add)
}

func packSignsSumSq(dst []byte, src []float32, acc *[16]float64) int { return 0 }

func splitFloat32(words, exp []byte, src []float32) { splitFloat32Generic(words, exp, src) }
func mergeFloat32(dst []float32, words, exp []byte, add bool) {
	mergeFloat32Generic(dst, words, exp, add)
}
