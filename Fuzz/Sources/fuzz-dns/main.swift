import Glibc
@_spi(Fuzzing) import NameService

// libFuzzer's driver, run from SwiftPM's entry point (which takes the place of main).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzer(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
               _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

/// One input is one datagram (or TCP message) sent to the name server.
let exercise: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32 = { data, size in
    DNSFuzzing.exercise(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(runFuzzer(&argc, &argv, exercise))
