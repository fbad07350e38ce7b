/* Generated source 22 of the steps context. */
int f22(int x) { return x * 22 + 1; }
