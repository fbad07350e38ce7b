/* Generated source 30 of the steps context. */
int f30(int x) { return x * 30 + 1; }
