import ArgumentParser
import Logging
import UnderstudyProtection

/// `--service-ip` and `--service-interface`, shared by primary and backup: the address clients
/// use moves with the primary role (DESIGN.md, "Service address").
struct ServiceIPOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "IPv4/PREFIX that moves with the primary role: whoever wins the generation adds it to --service-interface and announces it (gratuitous ARP, three times); whoever loses or stands down removes it first. A backup never holds it before it wins. --listen then names this IP.",
            valueName: "IP/PREFIX"))
    var serviceIP: String?

    @Option(name: .long, help: ArgumentHelp("The interface the service IP goes on (with --service-ip).", valueName: "IF"))
    var serviceInterface: String?

    func validate() throws {
        _ = try parsed()
    }

    private func parsed() throws -> ServiceIP? {
        switch (serviceIP, serviceInterface) {
        case (nil, nil): return nil
        case (let ip?, let interface?):
            do { return try ServiceIP(parsing: ip, interface: interface) } catch { throw ValidationError("--service-ip \(error)") }
        case (_?, nil): throw ValidationError("--service-ip needs --service-interface")
        case (nil, _?): throw ValidationError("--service-interface needs --service-ip")
        }
    }

    func holder(logger: Logger) throws -> ServiceIPHolder? {
        try parsed().map { ServiceIPHolder($0, logger: logger) }
    }
}
